// Starts a real `dialbridge serve` for the SDK's tests: loopback, ports picked by the
// kernel, a store in a temporary directory. The binary is $DIALBRIDGE_BIN or the workspace's
// target/debug/dialbridge (build it with `cargo build -p dialbridge --bin dialbridge`).

import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createInterface } from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));

export const ACCOUNT = 'acct_01h2xcejqtf2nbrexx3vqjhp41';
export const SECRET = 'sk_test_sdk_1';
export const PK = 'pk_test_sdk_00000001';
export const ALICE = 'user_01h2xcejqtf2nbrexx3vqjhp42';
export const CAROL = 'user_01h2xcejqtf2nbrexx3vqjhp43';

export function binary() {
  const bin = process.env.DIALBRIDGE_BIN || join(here, '..', '..', '..', 'target', 'debug', 'dialbridge');
  if (!existsSync(bin)) {
    throw new Error(`no dialbridge binary at ${bin}: run cargo build -p dialbridge --bin dialbridge`);
  }
  return bin;
}

function config(dir) {
  return `
[sip]
listen = ["udp:127.0.0.1:0"]
[api]
listen = "127.0.0.1:0"
[store]
url = "sqlite://${join(dir, 'dialbridge.db')}"
[media]
ports = "46000-46999"
[calls]
agent_ring_secs = 5
customer_ring_secs = 5
shutdown_grace_secs = 1

[[accounts]]
id = "${ACCOUNT}"
name = "Acme"
region = "US"
api_keys = [{ key = "ak_sdk_1", secret = "${SECRET}" }]
webhook_secret = "whsec_sdk_1"
allowed_prefixes = ["+1"]
publishable_keys = ["${PK}"]
calls_per_second = 100
burst = 100

[[users]]
id = "${ALICE}"
account = "${ACCOUNT}"
name = "Alice Agent"
extension = "1001"
devices = [{ username = "alice-desk", password = "s3cret-desk" }]

[[users]]
id = "${CAROL}"
account = "${ACCOUNT}"
name = "Carol Agent"
extension = "1002"

[[trunks]]
name = "carrier"
account = "${ACCOUNT}"
address = "127.0.0.1:9"
transport = "udp"
`;
}

/** Starts the server; resolves to { base, stop() } once it says it is ready. */
export async function startServer() {
  const dir = mkdtempSync(join(tmpdir(), 'dialbridge-sdk-'));
  const cfg = join(dir, 'dialbridge.toml');
  writeFileSync(cfg, config(dir));
  const child = spawn(binary(), ['serve', '--config', cfg], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, RUST_LOG: 'info', NO_COLOR: '1' },
  });
  let log = '';
  child.stderr.on('data', (d) => {
    log += d;
  });
  const lines = createInterface({ input: child.stdout });
  const base = await new Promise((resolve, reject) => {
    let api;
    const timer = setTimeout(() => reject(new Error(`dialbridge did not start:\n${log}`)), 30_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`dialbridge exited (${code}):\n${log}`));
    });
    lines.on('line', (line) => {
      const m = /^dialbridge: REST listening on (http:\/\/\S+?)\/?$/.exec(line);
      if (m) api = m[1];
      if (line.startsWith('dialbridge: ready') && api) {
        clearTimeout(timer);
        resolve(api);
      }
    });
  });
  return {
    base,
    log: () => log,
    async stop() {
      child.removeAllListeners('exit');
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 10_000);
      await done;
      clearTimeout(t);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** A request with the secret key, as an application's backend makes it. */
export async function backend(base, method, path, body) {
  const resp = await fetch(base + path, {
    method,
    headers: {
      Authorization: `Bearer ${SECRET}`,
      ...(body === undefined ? {} : { 'Content-Type': 'application/json' }),
    },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await resp.text();
  return { status: resp.status, body: text ? JSON.parse(text) : null };
}
