import js from '@eslint/js';
import tseslint from 'typescript-eslint';

/**
 * The layers (docs/ARCHITECTURE.md), as code: what each folder under src/ may import of the others,
 * lowest first. A lower layer never reaches up, the coordinator and the agent never reach each other,
 * and nothing in src/ reaches into test/ or bench/ (cli/, the top, may import any folder). Import
 * circles between files are test/unit/import-graph.test.ts's to find.
 */
/** The modules at the top of src/ that every layer may use: the error catalogue, whole reads, copies. */
const everywhere = ['errors.js', 'read-exactly.js', 'copy-bytes.js'];
const layers = {
  native: [],
  qemu: [...everywhere],
  libvirt: [...everywhere, 'qemu/'],
  fec: [...everywhere, 'native/'],
  transport: [...everywhere, 'fec/', 'native/'],
  control: [...everywhere],
  topology: [...everywhere],
  memory: [...everywhere, 'native/', 'topology/'],
  plan: [...everywhere, 'memory/', 'topology/'],
  announce: [...everywhere, 'memory/'],
  store: [...everywhere, 'memory/'],
  live: [...everywhere, 'libvirt/', 'memory/', 'native/', 'qemu/', 'store/', 'topology/'],
  wire: [...everywhere, 'control/', 'live/', 'memory/', 'topology/'],
  seed: [...everywhere, 'memory/', 'plan/', 'store/', 'topology/', 'transport/', 'wire/'],
  agent: [
    ...everywhere,
    ...['announce/', 'control/', 'libvirt/', 'live/', 'memory/', 'native/', 'qemu/', 'store/'],
    ...['topology/', 'transport/', 'wire/'],
  ],
  coordinator: [
    ...everywhere,
    ...['announce/', 'control/', 'libvirt/', 'live/', 'memory/', 'native/', 'plan/', 'qemu/'],
    ...['seed/', 'store/', 'topology/', 'transport/', 'wire/'],
  ],
  local: [...everywhere, 'memory/', 'store/', 'topology/'],
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
