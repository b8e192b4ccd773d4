import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * The layers (docs/ARCHITECTURE.md), as code: what each folder under src/ may import of the others,
 * lowest first. A lower layer never reaches up, the coordinator and the agent never reach each other,
 * and nothing in src/ reaches into test/ or bench/ (cli/, the top, may import any folder). Import
 * circles between files are test/unit/import-graph.test.ts's to find.
 */
const layers = {
  native: [],
  qemu: ['errors.js'],
  transport: ['errors.js'],
  control: ['errors.js'],
  topology: ['errors.js'],
  memory: ['errors.js', 'native/', 'topology/'],
  plan: ['errors.js', 'memory/', 'topology/'],
  announce: ['errors.js', 'memory/'],
  store: ['errors.js', 'memory/'],
  live: ['errors.js', 'memory/', 'native/', 'qemu/', 'store/', 'topology/'],
  wire: ['errors.js', 'control/', 'live/', 'memory/', 'topology/'],
  seed: ['errors.js', 'memory/', 'plan/', 'store/', 'topology/', 'transport/', 'wire/'],
  agent: [
    'errors.js',
    'announce/',
    'control/',
    'live/',
    'memory/',
    'native/',
    'qemu/',
    'store/',
    'topology/',
    'transport/',
    'wire/',
  ],
  coordinator: [
    'errors.js',
    'announce/',
    'control/',
    'live/',
    'memory/',
    'native/',
    'plan/',
    'qemu/',
    'seed/',
    'store/',
    'topology/',
    'transport/',
    'wire/',
  ],
  local: ['errors.js', 'memory/', 'store/', 'topology/'],
};
const escape = (text) => text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
const layerRules = Object.entries(layers).map(([folder, allowed]) => ({
  files: [`src/${folder}/**/*.ts`],
  rules: {
    'no-restricted-imports': [
      'error',
      {
        patterns: [
          {
            // Any import that leaves the folder, unless it goes to an allowed one.
            regex: `^\\.\\./${allowed.length ? `(?!(?:${allowed.map(escape).join('|')}))` : ''}`,
            message: `src/${folder}/ may import only ${allowed.join(', ') || 'node builtins and packages'} of src/ (docs/ARCHITECTURE.md, layers)`,
          },
          { group: ['**/test/**', '**/bench/**'], message: 'src/ never imports tests or benchmarks' },
        ],
      },
    ],
  },
}));

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', '.tmp/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      'no-constant-condition': ['error', { checkLoops: false }],
      eqeqeq: ['error', 'always'],
    },
  },
  ...layerRules,
  {
    files: ['bench/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['**/test/**'],
              message: 'benchmarks never import tests: what both use lives in bench/harness/',
            },
          ],
        },
      ],
    },
  },
);
