import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * The layers (docs/ARCHITECTURE.md), as code: what each folder under src/ may import of the others.
 * A lower layer never reaches up; nothing in src/ reaches into test/ or bench/.
 */
const layers = {
  qemu: ['errors.js'],
  transport: ['errors.js'],
  control: ['errors.js'],
  topology: ['errors.js'],
  native: [],
  memory: ['errors.js', 'native/', 'topology/'],
  plan: ['errors.js', 'memory/', 'topology/'],
  live: ['errors.js', 'memory/', 'native/', 'plan/', 'qemu/', 'scatter/', 'topology/'],
  scatter: [
    'errors.js',
    'control/',
    'live/',
    'memory/',
    'native/',
    'plan/',
    'qemu/',
    'topology/',
    'transport/',
  ],
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
);
