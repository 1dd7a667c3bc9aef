// End-to-end test of the web app in a real Chromium, against a running
// `pipeline serve`.
//
//   BASE_URL   the server, e.g. http://127.0.0.1:4600
//   FILES_DIR  images to upload; those whose names start with "corrupt" must
//              be refused, every other one must be transformed
//   OUT_DIR    where the screenshots go (created; default: a folder in the
//              system's temporary directory)
//   CHROMIUM   the browser (default /usr/bin/chromium)
//   TEST_TIMEOUT_MS  the whole run's limit (default 180000)
//
// Exit code 0 when every step passed; 1 with the failing step otherwise.

import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { chromium } from 'playwright-core';
import { Run, listFiles as listFilesIn } from './harness.mjs';

const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:4600').replace(/\/+$/, '');
const FILES_DIR = process.env.FILES_DIR;
const OUT_DIR = path.resolve(process.env.OUT_DIR || path.join(os.tmpdir(), 'pipeline-browser-test'));
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TOTAL_MS = Number(process.env.TEST_TIMEOUT_MS || 180_000);

const PROCESS_MS = 60_000; // the batch on a slow machine with a debug build
const ARCHIVE_MS = 30_000; // the archive writer lags behind `done`
const WAIT_MS = 15_000; // anything else

const DESKTOP = { width: 1280, height: 900 };
const PHONE = { width: 390, height: 844 };
const CHAIN = 'resize:64x64:exact,grayscale';

const run = new Run({ outDir: OUT_DIR, totalMs: TOTAL_MS });
let browser;
let page;

const step = (name, fn) => run.step(name, fn);
const shot = (name, options) => run.shot(name, options);
const dataNumber = (selector, key) => run.dataNumber(selector, key);
const dropFiles = (items) => run.dropFiles(items);
const listFiles = () => listFilesIn(FILES_DIR);

async function main() {
  const { files, valid, corrupt } = await listFiles();
  await mkdir(OUT_DIR, { recursive: true });
  console.log(`testing ${BASE_URL} with ${files.length} files (${valid.length} valid, ${corrupt.length} corrupt)`);

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
  page = await context.newPage();
  run.page = page;
  page.setDefaultTimeout(WAIT_MS);

  // Anything the page throws, and any CSP violation, fails the run.
  const problems = [];
  page.on('pageerror', (err) => problems.push(`uncaught: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && /Content Security Policy|Refused to/i.test(msg.text())) problems.push(`csp: ${msg.text()}`);
  });
  page.on('dialog', (d) => d.dismiss());

  // Job ids the server gave, from the upload answers.
  const accepted = new Set();
  const uploadUrls = [];
  page.on('response', async (resp) => {
    if (resp.request().method() !== 'POST' || new URL(resp.url()).pathname !== '/v1/images') return;
    uploadUrls.push(resp.url());
    if (resp.status() !== 202) return;
    try {
      for (const img of (await resp.json()).images) accepted.add(img.id);
    } catch {
      /* the page reports it */
    }
  });

  await step('01 open the page', async () => {
    const resp = await page.goto(`${BASE_URL}/`, { waitUntil: 'domcontentloaded' });
    assert.equal(resp.status(), 200);
    assert.match(resp.headers()['content-security-policy'] || '', /script-src 'self'/, 'the page is served with its CSP');
    await page.locator('#builder-form').waitFor({ state: 'visible' });
    await page.locator('#conn[data-state="live"]').waitFor();
    await page.locator('#dropzone').waitFor({ state: 'visible' });
    assert.equal(await page.locator('#queue-empty').isVisible(), true);
    // Auth off: nothing asks for a key.
    assert.equal(await page.locator('#key-button').getAttribute('data-state'), 'none');
    assert.equal(await page.locator('#key-state').textContent(), 'not set');
    assert.equal(await page.locator('#key-dialog').isVisible(), false, 'no key prompt');
    assert.equal(await page.locator('#auth-note').isVisible(), false);
    await shot('01-empty.png');
  });

  await step('02 add the files: per-file progress appears', async () => {
    // Watch the list: which states and progress bars were shown at all.
    await page.evaluate(() => {
      const seen = { states: [], progress: 0 };
      window.__seen = seen;
      new MutationObserver(() => {
        for (const row of document.querySelectorAll('[data-testid="upload-row"]')) {
          if (!seen.states.includes(row.dataset.state)) seen.states.push(row.dataset.state);
        }
        for (const bar of document.querySelectorAll('.urow-progress')) if (!bar.hidden && bar.value > 0) seen.progress += 1;
      }).observe(document.getElementById('upload-rows'), { subtree: true, childList: true, attributes: true });
    });
    // Slow the uploads so their progress is visible, then let them run.
    const cdp = await context.newCDPSession(page);
    await cdp.send('Network.enable');
    await cdp.send('Network.emulateNetworkConditions', {
      offline: false,
      latency: 20,
      downloadThroughput: -1,
      uploadThroughput: 1024 * 1024,
    });
    await page.locator('#file-input').setInputFiles(files);
    await page.locator(`#queue[data-total="${files.length}"]`).waitFor();
    await page.locator('[data-testid="upload-row"][data-state="uploading"] progress.urow-progress').first().waitFor({ state: 'visible' });
    await page.waitForFunction(() => [...document.querySelectorAll('.urow-progress')].some((p) => !p.hidden && p.value > 0));
    assert.equal(await page.locator('#overall-progress').isVisible(), true);
    assert.equal(await page.locator('#overall-progress').getAttribute('max'), String(files.length));
    // Show the files in flight (the list starts with those already done).
    await page.locator('#filters label', { hasText: 'Active' }).click();
    await page.evaluate(() => document.getElementById('queue-title').scrollIntoView());
    await shot('02-uploading.png');
    await page.locator('#filters label', { hasText: 'All' }).click();
    await cdp.send('Network.emulateNetworkConditions', { offline: false, latency: 0, downloadThroughput: -1, uploadThroughput: -1 });
    await cdp.detach();
  });

  await step(`03 ${valid.length} files done, ${corrupt.length} failed`, async () => {
    await page.waitForFunction(
      (total) => {
        const q = document.getElementById('queue').dataset;
        return q.active === '0' && Number(q.done) + Number(q.failed) === total;
      },
      files.length,
      { timeout: PROCESS_MS },
    );
    assert.equal(await dataNumber('#queue', 'done'), valid.length, 'files done');
    assert.equal(await dataNumber('#queue', 'failed'), corrupt.length, 'files failed');
    const seen = await page.evaluate(() => window.__seen);
    assert.ok(seen.states.includes('uploading'), `rows showed "uploading" (saw ${seen.states.join(', ')})`);
    assert.ok(seen.progress > 0, 'progress bars moved');
    assert.match(await page.locator('#overall-label').textContent(), new RegExp(`${files.length} of ${files.length} files finished`));
    await shot('03-processed.png');
  });

  await step('04 the corrupt files show why they failed', async () => {
    await page.locator('#filters label', { hasText: 'Failed' }).click();
    const rows = page.locator('[data-testid="upload-row"]');
    await page.waitForFunction((n) => document.querySelectorAll('[data-testid="upload-row"]').length === n, corrupt.length);
    for (let i = 0; i < corrupt.length; i++) {
      const row = rows.nth(i);
      assert.equal(await row.getAttribute('data-state'), 'failed');
      assert.match(await row.getAttribute('data-name'), /^corrupt/);
      assert.match(await row.textContent(), /corrupt|not an image/i, 'the reason names the problem');
    }
    await shot('04-failures.png');
    await page.locator('#filters label', { hasText: 'All' }).click();
  });

  await step('05 operations view: throughput and in-flight', async () => {
    await page.locator('#ops').scrollIntoViewIfNeeded();
    await page.waitForFunction((n) => Number(document.getElementById('throughput').dataset.done) >= n, valid.length);
    await page.waitForFunction(() => /^\d[\d,.\s]* of \d|not available/.test(document.getElementById('inflight').textContent));
    assert.match(await page.locator('[data-testid="queue-depths"]').textContent(), /not exposed/);
    assert.match(await page.locator('#throughput').getAttribute('aria-label'), new RegExp(`${valid.length} done`));
    await shot('05-operations.png');
  });

  let doneIds = [];
  await step('06 results appear in the gallery', async () => {
    // Every job accepted shows up. (A corrupt file is refused at upload, or
    // accepted and then failed by a worker: either way it is not done.)
    const ours = [...accepted];
    await page.waitForFunction((ids) => ids.every((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"]`)), ours);
    doneIds = await page.evaluate(
      (ids) => ids.filter((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"][data-state="done"]`)),
      ours,
    );
    assert.equal(doneIds.length, valid.length, 'one done job per valid file in the gallery');
    await page.locator('#gallery').scrollIntoViewIfNeeded();
    await page.evaluate(() => document.getElementById('gallery-title').scrollIntoView());
    await page.waitForFunction(() => [...document.querySelectorAll('#gallery-grid img')].slice(0, 8).every((i) => i.complete && i.naturalWidth > 0));
    await shot('06-gallery.png');
  });

  await step('07 after a reload the gallery comes back from the archive', async () => {
    // The archive writer stores a job a moment after it is done.
    const deadline = Date.now() + ARCHIVE_MS;
    for (;;) {
      const resp = await fetch(`${BASE_URL}/v1/images?limit=200`);
      const body = await resp.json();
      const archived = new Set(body.items.map((r) => r.job_id));
      const missing = doneIds.filter((id) => !archived.has(id));
      if (!missing.length) break;
      assert.ok(Date.now() < deadline, `${missing.length} jobs not archived after ${ARCHIVE_MS / 1000} s`);
      await new Promise((r) => setTimeout(r, 500));
    }
    await page.reload({ waitUntil: 'domcontentloaded' });
    await page.locator('#builder-form').waitFor({ state: 'visible' });
    await page.locator('#gallery-title').scrollIntoViewIfNeeded();
    const gallery = page.locator('#gallery-grid [data-testid="gallery-item"]');
    // Every job of this run, paging on: scrolling the sentinel into view
    // loads the next page, as it would for a person scrolling down.
    await page.waitForFunction(
      (ids) => {
        const all = ids.every((id) => document.querySelector(`#gallery-grid [data-job-id="${id}"]`));
        if (!all) document.getElementById('gallery-sentinel').scrollIntoView();
        return all;
      },
      doneIds,
      { timeout: WAIT_MS, polling: 250 },
    );
    assert.ok((await gallery.count()) >= valid.length, `at least ${valid.length} items`);
    await page.evaluate(() => document.getElementById('gallery-title').scrollIntoView());
    await page.waitForFunction(() => [...document.querySelectorAll('#gallery-grid img')].slice(0, 8).every((i) => i.complete && i.naturalWidth > 0));
    await shot('07-gallery-reloaded.png');
  });

  await step('08 compare an original with its result (keyboard slider)', async () => {
    // The first file's card, found by the name the page shows.
    const card = page.locator('#gallery-grid [data-testid="gallery-item"][data-state="done"]', {
      has: page.locator('.card-name', { hasText: path.basename(valid[0]) }),
    }).first();
    const id = await card.getAttribute('data-job-id');
    assert.ok(doneIds.includes(id), 'the card is one of this run');
    const compare = card.getByRole('button', { name: /^Compare/ });
    await compare.focus();
    await page.keyboard.press('Enter');
    const dialog = page.locator('#compare');
    await dialog.waitFor({ state: 'visible' });
    assert.equal(await dialog.getAttribute('data-job-id'), id);
    await page.waitForFunction(() => ['stage-original', 'stage-result'].every((i) => {
      const img = document.getElementById(i);
      return img.complete && img.naturalWidth > 0;
    }));
    // The slider has the focus; arrows move the split.
    assert.equal(await page.evaluate(() => document.activeElement.id), 'stage-range');
    for (let i = 0; i < 15; i++) await page.keyboard.press('ArrowLeft');
    assert.equal(await page.locator('#stage-range').inputValue(), '35');
    assert.match(await page.locator('#stage-original').evaluate((el) => el.style.clipPath), /inset\(0(px)? 65%/);
    await shot('08-compare-slider.png');
    await page.locator('#compare .segmented label', { hasText: 'Side by side' }).click();
    await page.locator('#side').waitFor({ state: 'visible' });
    await page.waitForFunction(() => ['side-original', 'side-result'].every((i) => document.getElementById(i).naturalWidth > 0));
    await shot('09-compare-side.png');
    await page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });
    assert.equal(await page.evaluate((x) => document.activeElement.closest('[data-job-id]')?.dataset.jobId, id), id, 'focus returns to the opener');
  });

  let chainId = '';
  await step(`09 build "${CHAIN}" and apply it to one more upload`, async () => {
    await page.locator('#builder').scrollIntoViewIfNeeded();
    await page.getByLabel('Custom chain').check();
    await page.locator('#op-select').selectOption('resize');
    await page.locator('#add-step').click();
    const resize = page.locator('#steps li[data-op="resize"]');
    await resize.locator('[data-param="size"]').fill('64x64');
    await resize.locator('[data-param="mode"]').selectOption('exact');
    await page.locator('#op-select').selectOption('grayscale');
    await page.locator('#add-step').click();
    assert.equal(await page.locator('#spec-text').inputValue(), CHAIN);
    assert.equal(await page.locator('#applied-spec').textContent(), CHAIN);
    assert.equal(await page.locator('#spec-issues li').count(), 0, 'no client-side issues');
    await page.locator('#builder').screenshot({ path: path.join(OUT_DIR, '10-builder.png') });
    run.screenshots.push(path.join(OUT_DIR, '10-builder.png'));

    // Drop one file on the drop zone, as a person would.
    const file = valid.find((f) => f.endsWith('.png')) || valid[0];
    const before = new Set(accepted);
    await dropFiles([{ name: `chain-${path.basename(file)}`, file }]);
    await page.waitForFunction(() => document.getElementById('queue').dataset.total === '1');
    await page.waitForFunction(() => document.getElementById('queue').dataset.done === '1', null, { timeout: PROCESS_MS });
    chainId = [...accepted].find((x) => !before.has(x));
    assert.ok(chainId, 'the upload was accepted');
    assert.ok(uploadUrls.at(-1).includes(`transform=${encodeURIComponent(CHAIN)}`), `the upload carried the spec (${uploadUrls.at(-1)})`);

    const card = page.locator(`#gallery-grid [data-job-id="${chainId}"][data-state="done"]`);
    await card.waitFor();
    assert.equal(await card.getAttribute('data-result-width'), '64');
    assert.equal(await card.getAttribute('data-result-height'), '64');
    assert.match(await card.textContent(), /→ 64×64/);
    assert.match(await card.locator('.card-spec').textContent(), /resize:64x64:exact/);
    // The bytes themselves: 64×64 and grey.
    const check = await page.evaluate(async (src) => {
      const img = new Image();
      img.src = src;
      await img.decode();
      const c = document.createElement('canvas');
      c.width = img.naturalWidth;
      c.height = img.naturalHeight;
      const ctx = c.getContext('2d');
      ctx.drawImage(img, 0, 0);
      const px = ctx.getImageData(0, 0, c.width, c.height).data;
      let spread = 0;
      for (let i = 0; i < px.length; i += 4) spread = Math.max(spread, Math.abs(px[i] - px[i + 1]), Math.abs(px[i + 1] - px[i + 2]));
      return { w: img.naturalWidth, h: img.naturalHeight, spread };
    }, `/v1/images/${chainId}/result`);
    assert.deepEqual([check.w, check.h], [64, 64], 'the result is 64x64');
    assert.ok(check.spread <= 2, `the result is grayscale (channel spread ${check.spread})`);
    await page.evaluate(() => document.getElementById('queue-title').scrollIntoView());
    await shot('11-transform-result.png');
  });

  await step('10 errors: a proxy\'s HTML 502, a busy 503, a lost answer, a silent event stream', async () => {
    // The event stream fails: completions must still arrive (status check).
    await page.route('**/v1/events', (route) => route.abort('connectionreset'));
    await page.reload({ waitUntil: 'domcontentloaded' });
    await page.locator('#builder-form').waitFor({ state: 'visible' });
    await page.locator('#conn:not([data-state="live"]):not([data-state="connecting"])').waitFor();
    // Uploads: one answered by a proxy's HTML page, one first told to wait.
    let busyAnswers = 0;
    // A lost answer: the server accepts the first copy, the page never
    // hears it, sends the file again under the same Idempotency-Key and
    // is given the same job (200, replayed), not a second one.
    const lost = [];
    const uploads = (url) => url.pathname === '/v1/images';
    await page.route(uploads, async (route) => {
      const body = route.request().method() === 'POST' ? route.request().postDataBuffer()?.toString('latin1') || '' : '';
      if (body.includes('filename="lost-')) {
        const answer = await route.fetch();
        lost.push({
          key: route.request().headers()['idempotency-key'],
          status: answer.status(),
          replayed: answer.headers()['idempotent-replayed'] === 'true',
          id: (await answer.json()).images?.[0]?.id,
        });
        if (lost.length === 1) await route.abort('connectionreset');
        else await route.fulfill({ response: answer });
      } else if (body.includes('filename="proxy-')) {
        await route.fulfill({ status: 502, contentType: 'text/html', body: '<html><body><h1>502 Bad Gateway</h1><hr>nginx</body></html>' });
      } else if (body.includes('filename="busy-') && busyAnswers < 1) {
        busyAnswers += 1;
        await route.fulfill({
          status: 503,
          contentType: 'application/json',
          headers: { 'Retry-After': '1' },
          body: JSON.stringify({ error: { code: 'unavailable', message: '256 jobs are in flight, the limit is 256; retry shortly' } }),
        });
      } else {
        await route.continue();
      }
    });
    const file = valid.find((f) => f.endsWith('.jpg')) || valid[0];
    await dropFiles([
      { name: 'proxy-1.jpg', file },
      { name: 'busy-1.jpg', file },
      { name: 'quiet-1.jpg', file },
      { name: 'lost-1.jpg', file },
    ]);
    await page.locator('[data-testid="upload-row"][data-name="busy-1.jpg"][data-state="retrying"]').waitFor();
    const proxy = page.locator('[data-testid="upload-row"][data-name="proxy-1.jpg"][data-state="failed"]');
    await proxy.waitFor();
    assert.match(await proxy.textContent(), /502/, 'the 502 is reported');
    assert.doesNotMatch(await proxy.textContent(), /<html|nginx/i, 'not the proxy\'s HTML');
    await page.evaluate(() => document.getElementById('queue-title').scrollIntoView());
    await shot('12-errors.png');
    // Without events, the two accepted files resolve by a status check (~10 s).
    await page.waitForFunction(() => document.getElementById('queue').dataset.done === '3', null, { timeout: PROCESS_MS });
    assert.equal(busyAnswers, 1);
    assert.equal(lost.length, 2, 'the upload whose answer was lost is sent again, once');
    assert.match(lost[0].key || '', /^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/, 'a UUID v7 key');
    assert.equal(lost[1].key, lost[0].key, 'the same Idempotency-Key both times');
    assert.deepEqual([lost[0].status, lost[1].status, lost[1].replayed], [202, 200, true], 'the second copy is the same job');
    assert.ok(lost[1].id && lost[1].id === lost[0].id, 'both answers name one job');
    await page.unroute(uploads);
    await page.unroute('**/v1/events');
    await page.locator('#conn[data-state="live"]').waitFor({ timeout: 30_000 });
  });

  await step('11 phone-sized screen: no horizontal scrolling', async () => {
    await page.setViewportSize(PHONE);
    await page.evaluate(() => window.scrollTo(0, 0));
    await page.waitForFunction(() => document.documentElement.scrollWidth <= window.innerWidth);
    const widths = await page.evaluate(() => ({ doc: document.documentElement.scrollWidth, view: window.innerWidth }));
    assert.ok(widths.doc <= widths.view, `page is ${widths.doc}px wide in a ${widths.view}px viewport`);
    await shot('13-phone.png');
    await page.evaluate(() => document.getElementById('gallery-title').scrollIntoView());
    await page.waitForFunction(() => [...document.querySelectorAll('#gallery-grid img')].slice(0, 2).every((i) => i.complete && i.naturalWidth > 0));
    assert.ok(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth), 'gallery fits the phone');
    await shot('14-phone-gallery.png');
  });

  assert.equal(await page.evaluate(() => document.getElementById('key-dialog').open), false, 'no key prompt in the whole run (auth off)');
  assert.equal(await page.locator('#auth-note').isVisible(), false);

  assert.deepEqual(problems, [], 'no uncaught errors or CSP violations');
}

await run.finish(main);
