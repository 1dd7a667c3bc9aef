// End-to-end test of the web app against a `pipeline serve --auth keys`,
// in a real Chromium: the key prompt, the key in headers (never in a URL),
// signed links for images, the event stream through a signed link.
//
//   BASE_URL   the server, running with `--auth keys` (e.g. http://127.0.0.1:4600)
//   FILES_DIR  images to upload; those whose names start with "corrupt" must
//              be refused, every other one must be transformed
//   API_KEY    a valid key of the server with the upload and read scopes
//              (`pipeline keys create --tenant acme`)
//   BAD_KEY    optional: a key the server refuses (default: a well-formed
//              key it does not know)
//   READ_KEY   optional: a valid key with the read scope only; when set, an
//              upload with it must be refused (403 forbidden)
//   OUT_DIR    where the screenshots go (created; default: a folder in the
//              system's temporary directory)
//   CHROMIUM   the browser (default /usr/bin/chromium)
//   TEST_TIMEOUT_MS  the whole run's limit (default 180000)
//
// Exit code 0 when every step passed; 1 with the failing step otherwise.

import assert from 'node:assert/strict';
import { readFile, mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Run, listFiles as listFilesIn } from './harness.mjs';

const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:4600').replace(/\/+$/, '');
const FILES_DIR = process.env.FILES_DIR;
const API_KEY = (process.env.API_KEY || '').trim();
const BAD_KEY = (process.env.BAD_KEY || `pk_${'0'.repeat(16)}_${'0'.repeat(64)}`).trim();
const READ_KEY = (process.env.READ_KEY || '').trim();
const OUT_DIR = path.resolve(process.env.OUT_DIR || path.join(os.tmpdir(), 'pipeline-browser-keys-test'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = Number(process.env.TEST_TIMEOUT_MS || 180_000);

const PROCESS_MS = 60_000; // the batch on a slow machine with a debug build
const WAIT_MS = 15_000; // anything else

const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };
const UUID = '[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}';
const SIGNED = new RegExp(`^/v1/images/${UUID}/(result|original)\\?tenant=[^&]+&expires=\\d+&sig=[0-9a-f]+`);

const run = new Run({ outDir: OUT_DIR, totalMs: TOTAL_MS });
let browser;
let page;

const step = (name, fn) => run.step(name, fn);
const shot = (name, options) => run.shot(name, options);
const dataNumber = (selector, key) => run.dataNumber(selector, key);
const dropFiles = (items) => run.dropFiles(items);
const listFiles = () => listFilesIn(FILES_DIR);

/** The times the key dialog was opened since the page loaded. */
const keyOpens = () => page.evaluate(() => window.__keyOpens || 0);

/** The key prompt is open, saying why. */
async function promptOpen() {
  await page.locator('#key-dialog').waitFor({ state: 'visible' });
  assert.equal(await page.locator('#key-dialog').evaluate((d) => d.open), true);
}

async function enterKey(key) {
  await page.locator('#key-input').fill(key);
  await page.locator('#key-save').click();
}

async function main() {
  assert.ok(API_KEY, 'API_KEY must be a valid key (upload and read scopes) of the server');
  const { files, valid, corrupt } = await listFiles();
  await mkdir(OUT_DIR, { recursive: true });
  console.log(`testing ${BASE_URL} (auth: keys) with ${files.length} files (${valid.length} valid, ${corrupt.length} corrupt)`);

  // The server must ask for keys, or this test proves nothing.
  const probe = await fetch(`${BASE_URL}/v1/images?limit=1`);
  assert.equal(probe.status, 401, `${BASE_URL} must run with --auth keys (GET /v1/images without a key answered ${probe.status})`);
  const keyCheck = await fetch(`${BASE_URL}/v1/images?limit=1`, { headers: { Authorization: `Bearer ${API_KEY}` } });
  assert.equal(keyCheck.status, 200, `API_KEY must be valid with the read scope (got ${keyCheck.status})`);

  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  run.browser = browser;
  const context = await browser.newContext({ viewport: DESKTOP, deviceScaleFactor: 1 });
  // Count the openings of the key prompt (once per storm of 401s).
  await context.addInitScript(() => {
    window.__keyOpens = 0;
    const showModal = HTMLDialogElement.prototype.showModal;
    HTMLDialogElement.prototype.showModal = function counted() {
      if (this.id === 'key-dialog') window.__keyOpens += 1;
      return showModal.call(this);
    };
  });
  page = await context.newPage();
  run.page = page;
  page.setDefaultTimeout(WAIT_MS);

  const problems = [];
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) problems.push(`csp: ${msg.text()}`);
  });
  page.on('dialog', (d) => d.dismiss());

  // Every request of the browser (pages, scripts, XHR, EventSource, images).
  let phase = 'no key';
  const requests = [];
  context.on('request', (req) => {
    requests.push({ phase, url: req.url(), method: req.method(), auth: req.headers().authorization || '' });
  });
  const answers = [];
  const accepted = new Map(); // job id -> upload answer
  page.on('response', async (resp) => {
    const url = new URL(resp.url());
    answers.push({ phase, method: resp.request().method(), path: url.pathname, search: url.search, status: resp.status() });
    if (resp.request().method() !== 'POST' || url.pathname !== '/v1/images' || resp.status() !== 202) return;
    try {
      for (const img of (await resp.json()).images) accepted.set(img.id, img);
    } catch {
      /* the page reports it */
    }
  });
  const isApi = (r) => new URL(r.url).pathname.startsWith('/v1/');
  const signedUrl = (r) => /[?&]sig=/.test(new URL(r.url).search);

  await step('01 without a key: a 401, its reason, and the key prompt (once)', async () => {
    const resp = await page.goto(`${BASE_URL}/`, { waitUntil: 'domcontentloaded' });
    assert.equal(resp.status(), 200);
    await promptOpen();
    // The gallery's list, the event link and the stats were all refused.
    await page.waitForFunction(() => /Could not load the gallery/.test(document.getElementById('gallery-status').textContent));
    await page.locator('#conn', { hasText: 'needs an API key' }).waitFor();
    await page.locator('#inflight', { hasText: 'needs an API key' }).waitFor();
    const refused = answers.filter((a) => a.status === 401).map((a) => a.path);
    for (const p of ['/v1/images', '/v1/events/link', '/v1/stats']) assert.ok(refused.includes(p), `${p} answered 401 (401s: ${refused.join(', ')})`);
    assert.match(await page.locator('#key-reason').textContent(), /missing_key.*Authorization: Bearer/, 'the prompt gives the server\'s code and message');
    assert.match(await page.locator('#auth-note').textContent(), /needs an API key.*missing_key/);
    assert.equal(await page.locator('#key-button').getAttribute('data-state'), 'refused');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'key-input', 'the key field has the focus');
    assert.equal(await keyOpens(), 1, 'three 401s, one prompt');
    assert.match(await page.locator('#gallery-status').textContent(), /missing_key|Authorization/);
    await shot('01-key-prompt.png');
  });

  await step('02 a wrong key is refused, and says why', async () => {
    await enterKey('not a key');
    await page.locator('#key-error', { hasText: 'no spaces' }).waitFor();
    phase = 'bad key';
    await enterKey(BAD_KEY);
    await page.locator('#key-error', { hasText: 'invalid_key' }).waitFor();
    assert.match(await page.locator('#key-error').textContent(), /refused this key: API key refused \(invalid_key\)/);
    await promptOpen();
    assert.equal(await page.evaluate(() => localStorage.getItem('pipeline.apiKey.v1')), null, 'a refused key is not kept');
    const check = requests.find((r) => r.phase === 'bad key' && r.url.endsWith('/v1/events/link'));
    assert.ok(check, 'the key was checked with the server');
    assert.equal(check.auth, `Bearer ${BAD_KEY}`, 'in the Authorization header');
    assert.equal(await keyOpens(), 1, 'the prompt stayed open, not reopened');
    await shot('02-key-wrong.png');
  });

  await step('03 the right key: the gallery, the live event stream, the stats', async () => {
    phase = 'good key';
    await enterKey(API_KEY);
    await page.locator('#key-dialog').waitFor({ state: 'hidden' });
    assert.equal(await page.locator('#key-button').getAttribute('data-state'), 'set');
    assert.equal(await page.locator('#key-state').textContent(), 'set');
    assert.equal(await page.locator('#auth-note').isVisible(), false, 'the note has gone');
    assert.equal(await page.evaluate(() => localStorage.getItem('pipeline.apiKey.v1')), API_KEY, 'kept in local storage');
    await page.locator('#conn[data-state="live"]').waitFor();
    // Loaded: cards (a server used before), or the word that there are none.
    await page.waitForFunction(
      () => document.querySelector('#gallery-grid [data-testid="gallery-item"]') || /No images yet/.test(document.getElementById('gallery-status').textContent),
    );
    assert.doesNotMatch(await page.locator('#gallery-status').textContent(), /Could not load/);
    await page.waitForFunction(() => /^\d[\d,.\s]* of \d/.test(document.getElementById('inflight').textContent));
    const list = requests.find((r) => r.phase === 'good key' && new URL(r.url).pathname === '/v1/images' && r.method === 'GET');
    assert.ok(list, 'the gallery was loaded again');
    assert.equal(list.auth, `Bearer ${API_KEY}`);
    const stream = requests.find((r) => r.phase === 'good key' && new URL(r.url).pathname === '/v1/events');
    assert.ok(stream, 'the event stream was opened');
    assert.match(new URL(stream.url).search, /^\?tenant=[^&]+&expires=\d+&sig=[0-9a-f]+$/, 'from a signed link');
    assert.equal(stream.auth, '', 'an EventSource sends no header');
    await shot('03-key-accepted.png');
  });

  let doneIds = [];
  await step(`04 drop ${files.length} files: uploads carry the key, ${valid.length} done and ${corrupt.length} failed live`, async () => {
    // Status answers say "pending" (with their links): completions can
    // only come from the event stream (the page checks a job only after
    // 10 s without its event, or asks a status for links).
    let checks = 0;
    const statusCheck = (url) => new RegExp(`^/v1/images/${UUID}$`).test(url.pathname) && !url.search.includes('sig=');
    await page.route(statusCheck, async (route) => {
      checks += 1;
      const answer = await route.fetch();
      if (answer.status() !== 200) return route.fulfill({ response: answer });
      const body = await answer.json();
      for (const k of ['result', 'info', 'error', 'original']) delete body[k];
      body.status = 'pending';
      return route.fulfill({ response: answer, json: body });
    });
    await page.evaluate(() => {
      window.__sameDocument = true; // gone if the page reloads
    });
    await dropFiles(files.map((file) => ({ name: path.basename(file), file })));
    await page.waitForFunction(
      (total) => {
        const q = document.getElementById('queue').dataset;
        return Number(q.total) === total && q.active === '0' && Number(q.done) + Number(q.failed) === total;
      },
      files.length,
      { timeout: PROCESS_MS },
    );
    assert.equal(await dataNumber('#queue', 'done'), valid.length, 'files done');
    assert.equal(await dataNumber('#queue', 'failed'), corrupt.length, 'files failed');
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'no reload');
    const posts = requests.filter((r) => r.method === 'POST' && new URL(r.url).pathname === '/v1/images');
    assert.ok(posts.length >= files.length, `${posts.length} uploads`);
    for (const p of posts) assert.equal(p.auth, `Bearer ${API_KEY}`, 'every upload carries the key');
    for (const img of accepted.values()) {
      assert.match(img.result_url, SIGNED, 'the upload answer has signed links');
      assert.match(img.original_url, SIGNED);
    }
    // Every accepted job reached the gallery live (a corrupt file is
    // refused at upload, or accepted and failed by a worker).
    const ours = [...accepted.keys()];
    await page.waitForFunction((ids) => ids.every((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"]`)), ours);
    doneIds = await page.evaluate(
      (ids) => ids.filter((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"][data-state="done"]`)),
      ours,
    );
    assert.equal(doneIds.length, valid.length, 'one done card per valid file');
    await page.locator('#filters label', { hasText: 'Failed' }).click();
    await page.waitForFunction((n) => document.querySelectorAll('[data-testid="upload-row"]').length === n, corrupt.length);
    for (const row of await page.locator('[data-testid="upload-row"]').all()) {
      assert.match(await row.textContent(), /corrupt|not an image/i, 'a corrupt file says why');
    }
    await page.locator('#filters label', { hasText: 'All' }).click();
    await page.unroute(statusCheck);
    console.log(`      (${checks} status answers made "pending" while the events came)`);
    await page.evaluate(() => document.getElementById('queue-title').scrollIntoView());
    await shot('04-uploaded.png');
  });

  await step('05 the results show in the gallery from signed links', async () => {
    await page.waitForFunction((ids) => ids.every((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"][data-state="done"]`)), doneIds);
    await page.evaluate(() => document.getElementById('gallery-title').scrollIntoView());
    const first = doneIds.slice(0, 6);
    await page.waitForFunction(
      (ids) => ids.every((id) => {
        const img = document.querySelector(`#gallery-grid [data-job-id="${id}"] img`);
        return img && img.complete && img.naturalWidth > 0;
      }),
      first,
    );
    for (const id of first) {
      const card = page.locator(`#gallery-grid [data-job-id="${id}"]`);
      const src = new URL(await card.locator('img').evaluate((i) => i.src));
      assert.match(src.pathname + src.search, SIGNED, 'the card\'s image is a signed link');
      assert.ok(src.pathname.startsWith(`/v1/images/${id}/result`), 'of its own result');
      assert.doesNotMatch(src.search, /[?&]try=/, 'loaded at the first try');
      assert.match(await card.locator('[data-testid="download-result"]').getAttribute('href'), SIGNED, 'the download link is signed');
      assert.match(await card.locator('[data-testid="download-original"]').getAttribute('href'), SIGNED);
    }
    await shot('05-gallery.png');
  });

  await step('06 compare: original and result from signed links', async () => {
    const card = page.locator(`#gallery-grid [data-job-id="${doneIds[0]}"]`);
    await card.locator('.card-media').click();
    await page.locator('#compare').waitFor({ state: 'visible' });
    await page.waitForFunction(() => ['stage-original', 'stage-result'].every((i) => {
      const img = document.getElementById(i);
      return img.complete && img.naturalWidth > 0;
    }));
    for (const id of ['stage-original', 'stage-result']) {
      const src = new URL(await page.locator(`#${id}`).evaluate((i) => i.src));
      assert.match(src.pathname + src.search, SIGNED);
    }
    await shot('06-compare.png');
    await page.keyboard.press('Escape');
    await page.locator('#compare').waitFor({ state: 'hidden' });
  });

  await step('07 an image whose link fails gets a fresh link from the job\'s status', async () => {
    const id = doneIds[1] || doneIds[0];
    const before = requests.length;
    // A link the server refuses (403 invalid_link, as an expired one is
    // 403 link_expired): the page asks the status for new links.
    await page.locator(`#gallery-grid [data-job-id="${id}"] img`).evaluate((img) => {
      img.src = img.src.replace(/sig=[0-9a-f]+/, `sig=${'0'.repeat(64)}`);
    });
    await page.waitForFunction(
      (jobId) => {
        const img = document.querySelector(`#gallery-grid [data-job-id="${jobId}"] img`);
        return img && /[?&]try=1/.test(img.src) && img.complete && img.naturalWidth > 0;
      },
      id,
    );
    const later = requests.slice(before);
    const status = later.find((r) => new URL(r.url).pathname === `/v1/images/${id}` && r.method === 'GET');
    assert.ok(status, 'the status was asked for new links');
    assert.equal(status.auth, `Bearer ${API_KEY}`, 'with the key');
    assert.ok(answers.some((a) => a.path === `/v1/images/${id}/result` && a.status === 403), 'the tampered link was refused');
    const src = new URL(await page.locator(`#gallery-grid [data-job-id="${id}"] img`).evaluate((i) => i.src));
    assert.doesNotMatch(src.search, /sig=0{64}/);

    // A job of another client (`pipeline upload`, a script): its event has
    // no links, the page asks its status for them.
    const file = valid.find((f) => f.endsWith('.png')) || valid[0];
    const form = new FormData();
    form.append('files', new Blob([await readFile(file)], { type: 'image/png' }), 'other-client.png');
    const up = await fetch(`${BASE_URL}/v1/images`, { method: 'POST', headers: { Authorization: `Bearer ${API_KEY}` }, body: form });
    assert.equal(up.status, 202);
    const other = (await up.json()).images[0].id;
    await page.evaluate(() => document.getElementById('gallery-title').scrollIntoView());
    await page.waitForFunction(
      (jobId) => {
        const img = document.querySelector(`#gallery-grid [data-job-id="${jobId}"][data-state="done"] img`);
        return img && img.complete && img.naturalWidth > 0;
      },
      other,
      { timeout: PROCESS_MS },
    );
    const otherSrc = new URL(await page.locator(`#gallery-grid [data-job-id="${other}"] img`).evaluate((i) => i.src));
    assert.match(otherSrc.pathname + otherSrc.search, SIGNED);
    assert.equal(await page.evaluate(() => window.__sameDocument), true, 'still no reload');
    await shot('07-link-renewed.png');
  });

  await step('08 after a reload the key is remembered: no prompt', async () => {
    phase = 'reloaded';
    await page.reload({ waitUntil: 'domcontentloaded' });
    await page.locator('#conn[data-state="live"]').waitFor();
    await page.waitForFunction((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"]`), doneIds[0]);
    assert.equal(await page.locator('#key-dialog').isVisible(), false);
    assert.equal(await keyOpens(), 0);
    assert.equal(await page.locator('#key-button').getAttribute('data-state'), 'set');
    assert.equal(answers.filter((a) => a.phase === 'reloaded' && a.status === 401).length, 0, 'no 401 with the key');
    for (const r of requests.filter((x) => x.phase === 'reloaded' && isApi(x) && !signedUrl(x))) {
      assert.equal(r.auth, `Bearer ${API_KEY}`, `${r.method} ${r.url} carries the key`);
    }
  });

  await step('09 a refused key: one prompt; an upload refused per file, then sent with the new key', async () => {
    phase = 'refused key';
    await page.evaluate((k) => localStorage.setItem('pipeline.apiKey.v1', k), BAD_KEY);
    await page.reload({ waitUntil: 'domcontentloaded' });
    await promptOpen();
    await page.locator('#key-reason', { hasText: 'invalid_key' }).waitFor();
    assert.match(await page.locator('#auth-note').textContent(), /refused the API key.*invalid_key/);
    assert.equal(await page.locator('#key-state').textContent(), 'refused');
    // Dismissed: the 401s that follow (an upload) show, but do not prompt.
    await page.keyboard.press('Escape');
    await page.locator('#key-dialog').waitFor({ state: 'hidden' });
    const file = valid.find((f) => f.endsWith('.jpg')) || valid[0];
    await dropFiles([{ name: 'refused-1.jpg', file }]);
    const row = page.locator('[data-testid="upload-row"][data-name="refused-1.jpg"]');
    await page.locator('[data-testid="upload-row"][data-name="refused-1.jpg"][data-state="failed"]').waitFor();
    assert.equal(await row.getAttribute('data-error-code'), 'invalid_key');
    assert.match(await row.textContent(), /API key refused \(invalid_key\)/);
    await page.waitForTimeout(1500); // nothing more is sent for it
    const sent = requests.filter((r) => r.phase === 'refused key' && r.method === 'POST');
    assert.equal(sent.length, 1, 'a refused upload is not retried by itself');
    assert.equal(sent[0].auth, `Bearer ${BAD_KEY}`);
    assert.equal(await keyOpens(), 1, 'one prompt for all the 401s');
    await page.evaluate(() => document.getElementById('queue-title').scrollIntoView());
    await shot('08-upload-refused.png');

    phase = 'good key again';
    await page.locator('#auth-note-open').click();
    await promptOpen();
    await enterKey(API_KEY);
    await page.locator('#key-dialog').waitFor({ state: 'hidden' });
    await page.locator('[data-testid="upload-row"][data-name="refused-1.jpg"][data-state="done"]').waitFor({ timeout: PROCESS_MS });
    const resent = requests.filter((r) => r.phase === 'good key again' && r.method === 'POST');
    assert.equal(resent.length, 1, 'sent once more with the new key');
    assert.equal(resent[0].auth, `Bearer ${API_KEY}`);
    await page.locator('#conn[data-state="live"]').waitFor();
    await shot('09-key-again.png');
  });

  if (READ_KEY) {
    await step('10 a read-only key: uploads refused per file (403 forbidden), no prompt', async () => {
      phase = 'read key';
      await page.locator('#key-button').click();
      await promptOpen();
      await enterKey(READ_KEY);
      await page.locator('#key-dialog').waitFor({ state: 'hidden' });
      const opens = await keyOpens();
      const file = valid.find((f) => f.endsWith('.jpg')) || valid[0];
      await dropFiles([{ name: 'readonly-1.jpg', file }]);
      const row = page.locator('[data-testid="upload-row"][data-name="readonly-1.jpg"][data-state="failed"]');
      await row.waitFor();
      assert.equal(await row.getAttribute('data-error-code'), 'forbidden');
      assert.match(await row.textContent(), /Not allowed \(forbidden\).*upload scope/);
      assert.equal(await keyOpens(), opens, 'a 403 does not prompt');
      assert.equal(requests.filter((r) => r.phase === 'read key' && r.method === 'POST').length, 1);
    });
  }

  await step('11 clearing the key: the note, not a prompt', async () => {
    await page.locator('#key-button').click();
    await promptOpen();
    const opens = await keyOpens();
    await page.locator('#key-clear').click();
    phase = 'cleared';
    await page.locator('#key-dialog').waitFor({ state: 'hidden' });
    assert.equal(await page.evaluate(() => localStorage.getItem('pipeline.apiKey.v1')), null);
    await page.locator('#auth-note', { hasText: 'missing_key' }).waitFor();
    assert.equal(await page.locator('#key-state').textContent(), 'needed');
    assert.equal(await keyOpens(), opens, 'no prompt right after clearing');
    for (const r of requests.filter((x) => x.phase === 'cleared')) assert.equal(r.auth, '', 'no key sent once cleared');
  });

  await step('12 links older than 50 minutes are renewed before use', async () => {
    // Another tab with the key stored, its clock moved on 51 minutes: the
    // links it holds are stale (the server's are still valid for 9).
    const other = await browser.newContext({ viewport: DESKTOP, deviceScaleFactor: 1, acceptDownloads: true });
    await other.addInitScript((k) => localStorage.setItem('pipeline.apiKey.v1', k), API_KEY);
    other.on('request', (req) => {
      requests.push({ phase: 'stale', url: req.url(), method: req.method(), auth: req.headers().authorization || '' });
    });
    const tab = await other.newPage();
    tab.setDefaultTimeout(WAIT_MS);
    tab.on('pageerror', (err) => problems.push(`uncaught (stale tab): ${err.message}`));
    try {
      await tab.clock.install();
      await tab.goto(`${BASE_URL}/`, { waitUntil: 'domcontentloaded' });
      await tab.locator('#conn[data-state="live"]').waitFor();
      const card = tab.locator('#gallery-grid [data-testid="gallery-item"][data-state="done"]').first();
      await card.waitFor();
      const id = await card.getAttribute('data-job-id');
      const link = card.locator('[data-testid="download-result"]');
      await tab.clock.fastForward('51:00');
      const before = requests.length;
      const download = tab.waitForEvent('download');
      await link.click();
      const url = new URL((await download).url());
      assert.match(url.pathname + url.search, SIGNED, 'downloaded from a signed link');
      const status = requests.slice(before).filter((r) => new URL(r.url).pathname === `/v1/images/${id}` && r.method === 'GET');
      assert.equal(status.length, 1, 'the stale link was renewed from the status, once');
      assert.equal(status[0].auth, `Bearer ${API_KEY}`);
      await tab.screenshot({ path: path.join(OUT_DIR, '10-stale-links.png') });
      run.screenshots.push(path.join(OUT_DIR, '10-stale-links.png'));
    } finally {
      await other.close();
    }
  });

  await step('13 phone-sized screen: the key control fits', async () => {
    await page.setViewportSize(PHONE);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth);
    assert.equal(await page.locator('#key-button').isVisible(), true);
    await shot('11-phone.png');
    await page.locator('#key-button').click();
    await promptOpen();
    await shot('12-phone-prompt.png');
    await page.keyboard.press('Escape');
  });

  await step('14 the key never appears in a URL', async () => {
    const secret = API_KEY.split('_').pop();
    assert.ok(requests.length > 50, `${requests.length} requests seen`);
    for (const r of requests) {
      let decoded = r.url;
      try {
        decoded = decodeURIComponent(r.url);
      } catch {
        /* as sent */
      }
      for (const k of [API_KEY, secret, BAD_KEY, READ_KEY].filter(Boolean)) {
        assert.ok(!r.url.includes(k) && !decoded.includes(k), `a key in ${r.url}`);
      }
      assert.doesNotMatch(r.url, /pk_[0-9a-f]{16}/i, `a key in ${r.url}`);
    }
  });

  assert.deepEqual(problems, [], 'no uncaught errors or CSP violations');
}

await run.finish(main);
