#!/usr/bin/env node
// Native-solc command line over the JavaScript build of the compiler (npm package `solc`,
// pinned in package-lock.json), so forge can use it as `solc = "bin/solc"`.
//
// The `solcjs` command that ships with the package does not work for forge as it is:
//   - it rejects `--allow-paths`, which forge always passes;
//   - it prints a `>>> Cannot retry compilation with SMT ...` line before its JSON output;
//   - it reads stdin with a blocking read that fails with EAGAIN on the non-blocking pipe forge
//     gives it.
// This wrapper calls the compiler API instead: it reads stdin as a stream, ignores
// `--allow-paths` and prints only the JSON output.
'use strict';

const fs = require('node:fs');
const path = require('node:path');

let solc;
try {
    solc = require(path.join(__dirname, '..', 'node_modules', 'solc'));
} catch (err) {
    process.stderr.write(`solc wrapper: cannot load the npm solc package (${err.message}); run scripts/contracts-toolchain.sh first\n`);
    process.exit(127);
}

function parseArgs(argv) {
    const options = { version: false, standardJson: false, basePath: null, includePaths: [] };
    for (let i = 0; i < argv.length; i++) {
        const arg = argv[i];
        const [flag, inlineValue] = arg.startsWith('--') && arg.includes('=') ? arg.split(/=(.*)/s, 2) : [arg, undefined];
        const value = () => (inlineValue !== undefined ? inlineValue : argv[++i]);
        switch (flag) {
            case '--version':
                options.version = true;
                break;
            case '--standard-json':
                options.standardJson = true;
                break;
            case '--base-path':
                options.basePath = value();
                break;
            case '--include-path':
                options.includePaths.push(value());
                break;
            case '--allow-paths':
                // solc-js has no file access policy of its own. Files are read only by importCallback below.
                value();
                break;
            default:
                process.stderr.write(`solc wrapper: unsupported argument ${arg}; only --version, --standard-json, --base-path, --include-path and --allow-paths are handled\n`);
                process.exit(2);
        }
    }
    return options;
}

function importCallback(options) {
    const roots = [options.basePath || process.cwd(), ...options.includePaths].map((root) => path.resolve(root));
    return (importPath) => {
        const candidates = path.isAbsolute(importPath) ? [importPath] : roots.map((root) => path.join(root, importPath));
        for (const candidate of candidates) {
            if (fs.existsSync(candidate)) {
                return { contents: fs.readFileSync(candidate, 'utf8') };
            }
        }
        return { error: `File not found: ${importPath} (searched ${roots.join(', ')})` };
    };
}

function readStdin() {
    return new Promise((resolve, reject) => {
        const chunks = [];
        process.stdin.on('data', (chunk) => chunks.push(chunk));
        process.stdin.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
        process.stdin.on('error', reject);
    });
}

async function main() {
    const options = parseArgs(process.argv.slice(2));
    if (options.version) {
        // forge parses the version from the last line.
        process.stdout.write(`solc, the solidity compiler commandline interface\nVersion: ${solc.version()}\n`);
        return;
    }
    if (!options.standardJson) {
        process.stderr.write('solc wrapper: only --standard-json compilation is supported\n');
        process.exit(2);
    }
    const input = await readStdin();
    const output = solc.compile(input, { import: importCallback(options) });
    process.stdout.write(output + '\n');
}

main().catch((err) => {
    process.stderr.write(`solc wrapper: ${err.stack || err}\n`);
    process.exit(1);
});
