// Builds the status page with esbuild. Run from forge-app/ (npm run build / npm run check):
//
//   node src/build.mjs                  writes static/status/status.js, the bundle the manifest's resource serves
//   node src/build.mjs --check          exit 1 if the committed bundle is not what the sources build
//   node src/build.mjs --dev OUTFILE    the same page with '@forge/bridge' aliased to src/dev/bridge.js,
//                                       for make local and the browser tests (never deployed)
//
// The output is deterministic (no timestamps, no absolute paths, no source map), so the committed bundle
// can be compared byte for byte: `forge deploy` uploads static/status as it is, with no build of its own.
import { readFile, mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as esbuild from 'esbuild';

const APP = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const BUNDLE = join(APP, 'static', 'status', 'status.js');

function options(dev) {
  return {
    absWorkingDir: APP,
    entryPoints: ['src/status/index.js'],
    bundle: true,
    // A classic script: Custom UI's content security policy allows same-origin scripts, no inline code.
    format: 'iife',
    platform: 'browser',
    target: ['es2020'],
    minify: true,
    legalComments: 'none',
    charset: 'utf8',
    write: false,
    outfile: 'status.js',
    logLevel: 'warning',
    ...(dev ? { alias: { '@forge/bridge': join(APP, 'src', 'dev', 'bridge.js') } } : {}),
  };
}

async function build(dev) {
  const result = await esbuild.build(options(dev));
  const [output] = result.outputFiles;
  return output.contents;
}

async function main(args) {
  if (args[0] === '--dev') {
    if (!args[1]) throw new Error('--dev needs the file to write');
    const outfile = resolve(args[1]);
    await mkdir(dirname(outfile), { recursive: true });
    await writeFile(outfile, await build(true));
    return 0;
  }
  const built = await build(false);
  if (args[0] === '--check') {
    const committed = await readFile(BUNDLE).catch(() => Buffer.alloc(0));
    if (Buffer.compare(Buffer.from(built), committed) !== 0) {
      console.error(
        `${relative(APP, BUNDLE)} is not what src/ builds: run \`npm ci && npm run build\` in forge-app/ and commit it`,
      );
      return 1;
    }
    return 0;
  }
  if (args.length) throw new Error(`unknown arguments: ${args.join(' ')} (see the top of src/build.mjs)`);
  await writeFile(BUNDLE, built);
  console.log(`wrote ${relative(APP, BUNDLE)} (${built.length} bytes)`);
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (error) => {
    console.error(error.message || error);
    process.exit(2);
  },
);
