// Drives headless Chromium over the DevTools protocol (Node's own WebSocket: no packages)
// through the dashboard, for tests/integration/dashboard.rs:
//
//   node --experimental-websocket dashboard.mjs CHROMIUM BASE_URL TOKEN OUT_DIR MODEL PAGE...
//
// Logs in with TOKEN, then for each PAGE (name=path) saves OUT_DIR/dashboard-NAME.png and
// prints `PAGE name {json of every element's data-* attributes}`. Then, on "/", prints
// `READY used` (MODEL's GPUs held), waits for a line on stdin, and prints `LIVE used` once
// the page shows another number without a reload (or `STALE used` after 60 s).
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [chromium, base, token, outDir, model, ...pages] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'gpu-cloud-chromium-'));
// Flags from this machine's notes: no background networking of any kind, no DNS at all
// (every URL here is 127.0.0.1), a fresh profile.
const browser = spawn(chromium, [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync',
  '--disable-default-apps', '--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1',
  // The test's port is any free one, and Chromium refuses some (6669: IRC) as unsafe.
  `--explicitly-allowed-ports=${new URL(base).port}`,
  `--user-data-dir=${profile}`, '--remote-debugging-port=0', '--window-size=1280,900',
  'about:blank',
], { stdio: ['ignore', 'ignore', 'pipe'] });
// Ends the test: Chromium is killed and waited for before its profile is removed, and a
// profile that cannot be removed is only reported: Chromium's helper processes outlive a
// SIGKILL of the browser for a moment and may still write there (rmSync then throws
// ENOTEMPTY, which would end this script with 1 after the test itself passed).
let ending = false;
const finish = async (code, why) => {
  if (ending) return;
  ending = true;
  if (why) console.error(why);
  if (browser.exitCode === null && browser.signalCode === null) {
    const gone = new Promise((r) => browser.once('exit', r));
    browser.kill('SIGKILL');
    await gone;
  }
  try {
    rmSync(profile, { recursive: true, force: true, maxRetries: 5 });
  } catch (e) {
    console.error(`left the profile ${profile}: ${e.message}`);
  }
  process.exit(code);
};
const fail = (why) => finish(1, why);
setTimeout(() => fail('the browser test took longer than 180 s'), 180_000).unref();

const wsUrl = await new Promise((resolve) => {
  let text = '';
  browser.stderr.on('data', (d) => {
    text += d;
    const m = text.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) resolve(m[1]);
  });
  browser.on('exit', (c, sig) => fail(`chromium exited (${c ?? sig}): ${text}`));
});
const ws = new WebSocket(wsUrl);
await new Promise((r) => ws.addEventListener('open', r));
let next = 0;
const waiting = new Map();
const listeners = [];
ws.addEventListener('message', (e) => {
  const msg = JSON.parse(e.data);
  if (msg.id && waiting.has(msg.id)) {
    const { resolve, reject } = waiting.get(msg.id);
    waiting.delete(msg.id);
    msg.error ? reject(new Error(JSON.stringify(msg.error))) : resolve(msg.result);
  } else if (msg.method) {
    for (const l of listeners) l(msg);
  }
});
const send = (method, params = {}, sessionId) => new Promise((resolve, reject) => {
  const id = ++next;
  waiting.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params, sessionId }));
});
const event = (name, sessionId) => new Promise((r) => {
  const l = (m) => { if (m.method === name && m.sessionId === sessionId) { listeners.splice(listeners.indexOf(l), 1); r(m); } };
  listeners.push(l);
});

const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
await send('Page.enable', {}, sessionId);
await send('Emulation.setDeviceMetricsOverride', { width: 1280, height: 900, deviceScaleFactor: 1, mobile: false }, sessionId);
const go = async (url) => {
  const loaded = event('Page.loadEventFired', sessionId);
  await send('Page.navigate', { url }, sessionId);
  await loaded;
};
const evaluate = async (expression) =>
  (await send('Runtime.evaluate', { expression, returnByValue: true }, sessionId)).result.value;
const data = () => evaluate(`JSON.stringify([...document.querySelectorAll('*')]
  .filter(e => Object.keys(e.dataset).length).map(e => ({...e.dataset})))`);
const used = () => evaluate(`(document.querySelector('[data-model="${model}"]') || {dataset: {}}).dataset.used || ''`);

await go(`${base}/login?token=${encodeURIComponent(token)}&next=/`);
for (const page of pages) {
  const [name, path] = page.split('=');
  await go(base + path);
  const shot = await send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true }, sessionId);
  writeFileSync(join(outDir, `dashboard-${name}.png`), Buffer.from(shot.data, 'base64'));
  console.log(`PAGE ${name} ${await data()}`);
}

await go(`${base}/`);
const before = await used();
console.log(`READY ${before}`);
await new Promise((r) => createInterface({ input: process.stdin }).once('line', r));
const until = Date.now() + 60_000;
let now = before;
while (now === before && Date.now() < until) {
  await new Promise((r) => setTimeout(r, 500));
  now = await used();
}
console.log(`${now === before ? 'STALE' : 'LIVE'} ${now}`);
await finish(0);
