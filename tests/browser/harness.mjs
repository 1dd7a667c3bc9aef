// What the browser tests share: named steps, screenshots, dropping files
// on the page, the list of test files, and a bounded run that reports.

import assert from 'node:assert/strict';
import { readdir, readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { performance } from 'node:perf_hooks';

export function secs(ms) {
  return `${(ms / 1000).toFixed(1)} s`;
}

/** The images of `dir`: all, the valid ones, and those named corrupt*. */
export async function listFiles(dir) {
  assert.ok(dir, 'FILES_DIR must name a directory of images');
  const names = (await readdir(dir)).sort();
  const files = [];
  for (const name of names) {
    const full = path.join(dir, name);
    if ((await stat(full)).isFile() && !name.startsWith('.')) files.push(full);
  }
  const corrupt = files.filter((f) => path.basename(f).startsWith('corrupt'));
  const valid = files.filter((f) => !corrupt.includes(f));
  assert.ok(valid.length > 0, `no valid images in ${dir}`);
  assert.ok(corrupt.length > 0, `no file named corrupt* in ${dir}`);
  return { files, valid, corrupt };
}

/** One test run: set `browser` and `page` once they exist. */
export class Run {
  constructor({ outDir, totalMs }) {
    this.outDir = outDir;
    this.totalMs = totalMs;
    this.screenshots = [];
    this.results = [];
    this.browser = null;
    this.page = null;
  }

  async step(name, fn) {
    const t0 = performance.now();
    try {
      await fn();
    } catch (err) {
      this.results.push({ name, ok: false });
      console.log(`FAIL  ${name} (${secs(performance.now() - t0)})`);
      throw err;
    }
    this.results.push({ name, ok: true });
    console.log(`ok    ${name} (${secs(performance.now() - t0)})`);
  }

  async shot(name, options = {}) {
    const file = path.join(this.outDir, name);
    await this.page.screenshot({ path: file, ...options });
    this.screenshots.push(file);
  }

  /** Number in a data attribute of `selector`. */
  async dataNumber(selector, key) {
    return Number(await this.page.locator(selector).getAttribute(`data-${key}`));
  }

  /** Drop files on the drop zone, as a person dragging them from a file manager. */
  async dropFiles(items) {
    const payload = [];
    for (const { name, file } of items) payload.push({ name, b64: (await readFile(file)).toString('base64') });
    await this.page.locator('#dropzone').evaluate((zone, list) => {
      const dt = new DataTransfer();
      for (const { name, b64 } of list) {
        const raw = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        dt.items.add(new File([raw], name, { type: name.endsWith('.png') ? 'image/png' : 'image/jpeg' }));
      }
      for (const type of ['dragenter', 'dragover', 'drop']) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: dt, bubbles: true, cancelable: true }));
      }
    }, payload);
  }

  /** Run `main` within the time limit (past it the browser is closed,
   * which fails the waiting step; should even that hang, the process
   * ends), report, and exit 0 when every step passed. */
  async finish(main) {
    const t0 = performance.now();
    let timedOut = false;
    const watchdog = setTimeout(() => {
      timedOut = true;
      this.browser?.close().catch(() => {});
      setTimeout(() => {
        console.error(`FAIL: the run took longer than ${this.totalMs / 1000} s and did not stop`);
        process.exit(1);
      }, 10_000).unref();
    }, this.totalMs);

    let failed = false;
    try {
      await main();
    } catch (err) {
      failed = true;
      if (timedOut) console.error(`\nFAIL: the run took longer than ${this.totalMs / 1000} s (TEST_TIMEOUT_MS)`);
      else if (err instanceof assert.AssertionError) console.error(`\nFAIL: ${err.message}`);
      else console.error(`\nFAIL: ${err.stack || err}`);
      if (this.page && !timedOut) {
        const file = path.join(this.outDir, 'failure.png');
        await this.page.screenshot({ path: file, fullPage: false }).then(() => this.screenshots.push(file)).catch(() => {});
      }
    } finally {
      clearTimeout(watchdog);
      await this.browser?.close().catch(() => {});
    }

    console.log(`\nscreenshots (${this.screenshots.length}):`);
    for (const s of this.screenshots) console.log(`  ${s}`);
    const passed = this.results.filter((r) => r.ok).length;
    console.log(`\nbrowser: ${passed} passed, ${this.results.length - passed} failed in ${secs(performance.now() - t0)}`);
    process.exit(failed ? 1 : 0);
  }
}
