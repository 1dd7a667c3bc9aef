// The pipeline web app: upload images, follow their jobs live, browse the
// archive, build transform specs and watch throughput.
//
// Plain ES2020 module, no framework, no build step. It runs under a strict
// Content-Security-Policy (no inline code or style), so every element is
// built with the DOM API, every server string goes through textContent or
// setAttribute, and styles set from script use the CSSOM.

// ---------------------------------------------------------------------------
// Settings
// ---------------------------------------------------------------------------

const CONFIG = Object.freeze({
  // Browsers open at most 6 HTTP/1.1 connections per origin and the event
  // stream holds one: 3 uploads leave room for status checks, the gallery's
  // images and the stats poll.
  uploadConcurrency: 3,
  busyRetries: 5, // attempts after a 503/429 before giving up
  retryAfterDefaultS: 1,
  retryAfterMaxS: 30,
  firstCheckMs: 10_000, // status check of a job with no event after this long
  laterCheckMs: 60_000, // then (rarely) again, doubling up to the max
  maxCheckMs: 300_000,
  checkConcurrency: 1,
  recentEventsMs: 120_000, // events kept for uploads whose answer is late
  galleryPage: 24,
  galleryMaxCards: 240, // beyond, the oldest cards go (scrolling loads them again)
  uploadTimeoutMs: 120_000, // one upload request, plus the time at 64 KB/s
  goneAfterChecks: 3, // a job the server keeps calling unknown has gone
  statsEveryMs: 3000,
  bucketMs: 10_000,
  buckets: 30, // 5 minutes
  rowHeight: 60, // px, when the stylesheet's --row-h is missing
  overscanRows: 6,
  storedNames: 3000,
  addChunk: 50, // files queued per task
  // Signed links (auth on) expire after an hour: older than this, ask the
  // job's status for new ones before using them.
  linkFreshMs: 50 * 60_000,
  linkConcurrency: 2, // status requests for links at once
  storedLinks: 2000,
  eventsRetryMaxMs: 30_000, // longest pause between event stream reconnections
});

const ERROR_LABELS = {
  payload_too_large: 'Too large',
  too_many_files: 'Too many files',
  unsupported_media_type: 'Not an image',
  not_an_image: 'Not an image',
  unsupported_format: 'Unsupported format',
  corrupt_image: 'Corrupt image',
  too_many_pixels: 'Too many pixels',
  empty_file: 'Empty file',
  invalid_input: 'Transform refused',
  invalid_query: 'Bad request',
  quota_exceeded: 'Quota exceeded',
  too_many_requests: 'Quota exceeded',
  unavailable: 'Server busy',
  network: 'Network error',
  cancelled: 'Cancelled',
  transform_failed: 'Transform failed',
  encode_failed: 'Encoding failed',
  panicked: 'Worker crashed',
  bad_response: 'Unreadable answer',
  server_error: 'Server error',
  missing_key: 'API key needed',
  invalid_key: 'API key refused',
  key_expired: 'API key expired',
  key_revoked: 'API key revoked',
  unauthorized: 'Not authenticated',
  forbidden: 'Not allowed',
  wrong_tenant: 'Wrong tenant',
  invalid_link: 'Invalid link',
  link_expired: 'Link expired',
};

const CODE_BY_STATUS = {
  400: 'bad_request',
  401: 'unauthorized',
  403: 'forbidden',
  404: 'not_found',
  413: 'payload_too_large',
  415: 'unsupported_media_type',
  422: 'unprocessable',
  429: 'too_many_requests',
  502: 'bad_gateway',
  503: 'unavailable',
  504: 'gateway_timeout',
};

const IMAGE_EXTENSIONS = new Set([
  'jpg', 'jpeg', 'jpe', 'jfif', 'png', 'apng', 'gif', 'webp', 'bmp', 'dib', 'tif', 'tiff',
  'avif', 'heic', 'heif', 'ico', 'qoi', 'tga', 'pnm', 'pbm', 'pgm', 'ppm', 'hdr', 'exr',
]);

// ---------------------------------------------------------------------------
// Small helpers
// ---------------------------------------------------------------------------

const $ = (selector, root = document) => root.querySelector(selector);

/** An element: `props` become attributes (text, class, dataset and on* are special). */
function h(tag, props = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value == null || value === false) continue;
    if (key === 'class') el.className = value;
    else if (key === 'text') el.textContent = value;
    else if (key === 'dataset') Object.assign(el.dataset, value);
    else if (key.startsWith('on') && typeof value === 'function') el.addEventListener(key.slice(2), value);
    else el.setAttribute(key, value === true ? '' : String(value));
  }
  for (const child of children) {
    if (child != null && child !== false) el.append(child); // strings become text nodes
  }
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
const ICONS = {
  trash: 'M9 2.5h6l1 2h4.5v2h-17v-2H8zM5.5 8h13l-1.1 13.5H6.6zM9.5 10.5v8.5H11v-8.5zM13 10.5v8.5h1.5v-8.5z',
  download: 'M11 3.5h2v9.1l3.3-3.3 1.4 1.4L12 16.4l-5.7-5.7 1.4-1.4 3.3 3.3zM4.5 18.5h15v2h-15z',
};

/** A decorative SVG icon (the button or link around it carries the name). */
function icon(name) {
  const svg = document.createElementNS(SVG_NS, 'svg');
  svg.setAttribute('viewBox', '0 0 24 24');
  svg.setAttribute('class', 'icon');
  svg.setAttribute('aria-hidden', 'true');
  svg.setAttribute('focusable', 'false');
  const path = document.createElementNS(SVG_NS, 'path');
  path.setAttribute('d', ICONS[name]);
  path.setAttribute('fill-rule', 'evenodd');
  svg.append(path);
  return svg;
}

const str = (v, max = 2000) => (typeof v === 'string' ? v.slice(0, max) : v == null ? '' : String(v).slice(0, max));
const num = (v) => (typeof v === 'number' && Number.isFinite(v) ? v : null);
const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
const enc = encodeURIComponent;
const now = () => Date.now();

function safeJson(text) {
  if (typeof text !== 'string' || text === '') return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

const intFmt = new Intl.NumberFormat();
const fmtInt = (n) => intFmt.format(n);

function fmtBytes(n) {
  if (num(n) === null) return '—';
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  while (n >= 1000 && i < units.length - 1) {
    n /= 1000;
    i += 1;
  }
  const digits = i === 0 || n >= 100 ? 0 : n >= 10 ? 1 : 2;
  return `${n.toFixed(digits)} ${units[i]}`;
}

function fmtMs(ms) {
  if (num(ms) === null) return '—';
  if (ms < 10) return `${ms.toFixed(1)} ms`;
  if (ms < 1000) return `${Math.round(ms)} ms`;
  return `${(ms / 1000).toFixed(ms < 10_000 ? 2 : 1)} s`;
}

const fmtDims = (m) => (m && m.width && m.height ? `${m.width}×${m.height}` : '—');
const fmtFormat = (m) => (m && m.format ? m.format.toUpperCase() : '—');
const plural = (n, one, many = `${one}s`) => `${fmtInt(n)} ${n === 1 ? one : many}`;
const shortId = (id) => (id ? `#${id.replace(/-/g, '').slice(-8)}` : '');

function fmtTime(ms) {
  if (num(ms) === null) return '—';
  return new Date(ms).toLocaleString(undefined, { dateStyle: 'medium', timeStyle: 'medium' });
}

function extensionOf(name) {
  const m = /\.([A-Za-z0-9]{1,8})$/.exec(name || '');
  return m ? m[1].toLowerCase() : '';
}

function baseName(name) {
  return (name || '').replace(/^.*[\\/]/, '').replace(/\.[A-Za-z0-9]{1,8}$/, '') || 'image';
}

function looksLikeImage(file) {
  if (!file || file.name.startsWith('.')) return false;
  if (file.type) return file.type.startsWith('image/');
  return IMAGE_EXTENSIONS.has(extensionOf(file.name));
}

/**
 * `fn` on an animation frame, at most once per `interval` ms (or on the
 * next frame when `urgent`): thousands of progress events and completions
 * cost a few renders a second, not one each.
 */
function frameThrottle(fn, interval) {
  let timer = 0;
  let frame = 0;
  let last = 0;
  const run = () => {
    frame = 0;
    last = performance.now();
    fn();
  };
  return (urgent = false) => {
    if (frame) return;
    const wait = urgent ? 0 : interval - (performance.now() - last);
    if (wait <= 0) {
      clearTimeout(timer);
      timer = 0;
      frame = requestAnimationFrame(run);
    } else if (!timer) {
      timer = setTimeout(() => {
        timer = 0;
        if (!frame) frame = requestAnimationFrame(run);
      }, wait);
    }
  };
}

function isEditable(target) {
  return target instanceof HTMLElement && (target.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(target.tagName));
}

// Bare paths: for API calls (sent with the key), and for images when the
// server does not sign links (auth off). Images otherwise come from the
// links the server gives (see Links).
const urls = {
  status: (id) => `/v1/images/${enc(id)}`,
  result: (id) => `/v1/images/${enc(id)}/result`,
  original: (id) => `/v1/images/${enc(id)}/original`,
};

/** A link the server gave, if it is a path on this origin ('' otherwise). */
function safeLink(v) {
  const s = str(v, 4000);
  return /^\/(?![/\\])/.test(s) ? s : '';
}

/** Whether `url` is a signed link (it expires, and works without a header). */
const isSigned = (url) => /[?&]sig=/.test(url || '');

/** `url` with `param` added to its query (signed links take more params after `&`). */
const withQuery = (url, param) => `${url}${url.includes('?') ? '&' : '?'}${param}`;

// ---------------------------------------------------------------------------
// API errors: JSON `{"error":{code,message,reason}}` or anything a proxy says
// ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message, extra = {}) {
    super(message);
    this.status = status;
    this.code = code;
    this.reason = extra.reason || '';
    this.retryable = Boolean(extra.retryable);
  }
}

/** The error an HTTP answer carries, whatever its body is. */
function errorFromAnswer(status, statusText, contentType, body) {
  let code = '';
  let message = '';
  let reason = '';
  const json = /json/i.test(contentType || '') || /^\s*\{/.test(body || '') ? safeJson(body) : null;
  if (json && isObject(json.error)) {
    code = str(json.error.code, 100);
    message = str(json.error.message, 1000);
    reason = str(json.error.reason, 100);
  }
  if (!code) code = CODE_BY_STATUS[status] || (status >= 500 ? 'server_error' : 'http_error');
  if (!message) {
    const what = `${status}${statusText ? ` ${statusText}` : ''}`;
    message = json
      ? `The server answered ${what}.`
      : `The server answered ${what} without a readable error${status === 502 || status === 504 ? ' (a proxy could not reach the service)' : ''}.`;
  }
  return new ApiError(status, code, message, { reason, retryable: status >= 500 || status === 429 });
}

/** A failure's message without what the page shows beside it already. */
function tidyMessage(message, code, fileName = '') {
  let m = str(message, 1000).trim();
  for (const prefix of [fileName && `${fileName}: `, code && `${code}: `]) {
    if (prefix && m.startsWith(prefix)) m = m.slice(prefix.length);
  }
  return m;
}

function errorLabel(code) {
  return ERROR_LABELS[code] || (code ? code.replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase()) : 'Failed');
}

/**
 * GET (or other) JSON; throws ApiError on any failure. Requests to the API
 * carry the key (`key`: another one, for checking it); a 401 opens the key
 * prompt unless `quiet`.
 */
async function requestJson(path, init = {}, { key = Auth.key, quiet = false } = {}) {
  let resp;
  try {
    resp = await fetch(path, { ...init, headers: { Accept: 'application/json', ...Auth.header(path, key), ...(init.headers || {}) } });
  } catch {
    throw new ApiError(0, 'network', 'The server could not be reached.', { retryable: true });
  }
  const text = await resp.text().catch(() => '');
  if (!resp.ok) {
    const err = errorFromAnswer(resp.status, resp.statusText, resp.headers.get('content-type'), text);
    if (resp.status === 401 && !quiet) Auth.refused(err, key);
    throw err;
  }
  if (resp.status === 204 || text === '') return null;
  const json = safeJson(text);
  if (json === null) throw new ApiError(resp.status, 'bad_response', 'The server answered with something that is not JSON.');
  return json;
}

/** A UUID version 7 (48-bit Unix milliseconds, then random bits): the
 * upload's Idempotency-Key, from which the server derives the job id. */
function uuidv7() {
  const b = new Uint8Array(16);
  crypto.getRandomValues(b);
  let ms = Date.now();
  for (let i = 5; i >= 0; i -= 1) {
    b[i] = ms % 256;
    ms = Math.floor(ms / 256);
  }
  b[6] = (b[6] & 0x0f) | 0x70;
  b[8] = (b[8] & 0x3f) | 0x80;
  const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Seconds from a Retry-After header (seconds or an HTTP date), clamped. */
function retryAfterSeconds(header) {
  let s = CONFIG.retryAfterDefaultS;
  if (header) {
    const n = Number(header);
    if (Number.isFinite(n)) s = n;
    else {
      const at = Date.parse(header);
      if (Number.isFinite(at)) s = (at - now()) / 1000;
    }
  }
  return Math.min(CONFIG.retryAfterMaxS, Math.max(CONFIG.retryAfterDefaultS, s));
}

// ---------------------------------------------------------------------------
// Normalised jobs, from events, status answers and archive records
// ---------------------------------------------------------------------------

function media(m) {
  if (!isObject(m)) return null;
  return {
    format: str(m.format, 40),
    contentType: str(m.content_type, 100),
    width: num(m.width),
    height: num(m.height),
    size: num(m.size),
    sha256: str(m.sha256, 64),
  };
}

function normalizeJob(raw) {
  if (!isObject(raw)) return null;
  const info = isObject(raw.info) ? raw.info : null;
  const code = isObject(raw.error) ? str(raw.error.code, 100) : '';
  const error = isObject(raw.error) ? { code, message: tidyMessage(raw.error.message, code) } : null;
  const state = str(raw.status || raw.state, 20);
  const id = str(raw.id || raw.job_id, 64);
  // Status answers and list items carry the links to the job's images
  // (events do not).
  Links.put(id, raw);
  return {
    id,
    state: state === 'done' || state === 'failed' ? state : 'pending',
    spec: str(raw.spec, 1000),
    original: media(raw.original) || media(info && info.original),
    result: media(raw.result) || media(info && info.result),
    error,
    worker: str(raw.worker || (info && info.worker), 200),
    submittedAt: num(raw.submitted_at_ms),
    finishedAt: num(raw.finished_at_ms) ?? num(raw.updated_at_ms),
    timings: info
      ? { decode: num(info.decode_ms), transform: num(info.transform_ms), encode: num(info.encode_ms) }
      : null,
  };
}

// ---------------------------------------------------------------------------
// File names of jobs, remembered by this browser (the API does not return them)
// ---------------------------------------------------------------------------

const Names = {
  key: 'pipeline.names.v1',
  map: new Map(),
  timer: 0,
  load() {
    try {
      const pairs = safeJson(localStorage.getItem(this.key));
      if (Array.isArray(pairs)) {
        for (const p of pairs) if (Array.isArray(p) && typeof p[0] === 'string' && typeof p[1] === 'string') this.map.set(p[0], p[1]);
      }
    } catch {
      /* storage disabled: names last for this page only */
    }
  },
  get(id) {
    return this.map.get(id) || '';
  },
  set(id, name) {
    this.map.delete(id);
    this.map.set(id, name);
    while (this.map.size > CONFIG.storedNames) this.map.delete(this.map.keys().next().value);
    if (!this.timer) this.timer = setTimeout(() => this.save(), 1000);
  },
  forget(id) {
    if (this.map.delete(id) && !this.timer) this.timer = setTimeout(() => this.save(), 1000);
  },
  save() {
    this.timer = 0;
    try {
      localStorage.setItem(this.key, JSON.stringify([...this.map]));
    } catch {
      /* full or disabled */
    }
  },
};

const displayName = (id) => Names.get(id) || `Image ${shortId(id)}`;

// ---------------------------------------------------------------------------
// The API key: kept in this browser, sent as a header, asked for on a 401
// ---------------------------------------------------------------------------

const Auth = {
  storeKey: 'pipeline.apiKey.v1',
  key: '', // what every request to /v1/* carries (empty: none)
  problem: null, // the server's last 401 (ApiError) while no working key is known
  prompted: false, // the prompt opened by itself since the key last changed
  opener: null,

  load() {
    try {
      this.key = str(localStorage.getItem(this.storeKey) || '', 500);
    } catch {
      /* storage disabled: the key lasts for this page only */
    }
  },

  /** The Authorization header for a request to `path` (the API's paths only). */
  header(path, key = this.key) {
    return key && /^\/v1\//.test(path) ? { Authorization: `Bearer ${key}` } : {};
  },

  init() {
    this.dialog = $('#key-dialog');
    this.input = $('#key-input');
    $('#key-button').addEventListener('click', () => this.open());
    $('#auth-note-open').addEventListener('click', () => this.open());
    $('#key-form').addEventListener('submit', (ev) => {
      ev.preventDefault();
      this.save();
    });
    $('#key-clear').addEventListener('click', () => this.clear());
    $('#key-cancel').addEventListener('click', () => this.dialog.close());
    this.dialog.addEventListener('close', () => {
      this.input.value = ''; // not left in the page
      if (this.opener && this.opener.isConnected) this.opener.focus();
    });
    this.render();
  },

  /**
   * The server answered 401 to a request sent with `used`: say why, and
   * open the prompt once (later 401s only update what it says). A request
   * sent with a key replaced since says nothing about the new one.
   */
  refused(err, used = this.key) {
    if (used !== this.key) return;
    this.problem = err;
    this.render();
    if (this.dialog.open) this.showReason();
    else if (!this.prompted) {
      this.prompted = true;
      Announcer.say(`The server needs an API key: ${err.message}`);
      this.open();
    }
  },

  open() {
    if (!this.dialog.open) {
      this.opener = document.activeElement;
      this.dialog.showModal();
    }
    this.showReason();
    this.setError('');
    $('#key-clear').hidden = !this.key;
    $('#key-current').textContent = this.key ? `In use: ${this.label()}. A new key replaces it.` : 'No key is set.';
    this.input.focus();
  },

  showReason() {
    const el = $('#key-reason');
    const p = this.problem;
    el.hidden = !p;
    el.textContent = p ? `The server refused a request: ${errorLabel(p.code)} (${p.code}): ${p.message}` : '';
  },

  setError(message) {
    $('#key-error').textContent = message;
    this.input.setAttribute('aria-invalid', message ? 'true' : 'false');
  },

  /** Check the key with the server, then keep it. */
  async save() {
    const key = this.input.value.trim().replace(/^bearer\s+/i, '');
    if (!key) {
      this.setError('Enter a key (it starts with pk_), or press Cancel.');
      return;
    }
    if (!/^[\x21-\x7e]+$/.test(key)) {
      this.setError('A key has no spaces or special characters: it looks like pk_<16 hex digits>_<64 hex digits>.');
      return;
    }
    const button = $('#key-save');
    button.disabled = true;
    this.setError('');
    $('#key-checking').hidden = false;
    try {
      // Any route that needs the key; the answer is not used.
      await requestJson('/v1/events/link', {}, { key, quiet: true });
    } catch (err) {
      // 403: the key is valid but lacks the read scope (an upload-only
      // key): kept, and the gallery says what it cannot do. 404: a server
      // without this route.
      if (err.status === 401 || err.status === 0 || err.status >= 500) {
        this.setError(
          err.status === 401
            ? `The server refused this key: ${errorLabel(err.code)} (${err.code}): ${err.message}`
            : `The key could not be checked: ${err.message} Try again.`,
        );
        this.input.focus();
        return;
      }
    } finally {
      button.disabled = false;
      $('#key-checking').hidden = true;
    }
    this.store(key);
    this.dialog.close();
    Announcer.say('API key saved');
    this.changed(true);
  },

  clear() {
    this.store('');
    this.prompted = true; // asked for: the next 401 shows the note, not the prompt
    this.dialog.close();
    Announcer.say('API key cleared');
    this.changed(false);
  },

  store(key) {
    this.key = key;
    this.problem = null;
    this.prompted = false;
    try {
      if (key) localStorage.setItem(this.storeKey, key);
      else localStorage.removeItem(this.storeKey);
    } catch {
      /* not kept after this page */
    }
    this.render();
  },

  /** Another key (or none): another tenant, perhaps. Start again with it. */
  changed(added) {
    Links.clear();
    Gallery.reset();
    Gallery.loadMore();
    Jobs.retryMs = 1000;
    Jobs.connect();
    Ops.statsGone = false;
    Ops.schedulePoll(0);
    // Files refused for want of a key are sent once more with the new one.
    if (added) {
      const refused = Uploads.entries.filter((e) => e.state === 'failed' && e.keyRefused && e.retryable);
      for (const e of refused) Uploads.retry(e);
      if (refused.length) Announcer.say(`Sending ${plural(refused.length, 'file')} again with the new key`);
    }
  },

  /** Which key, without its secret: the id part of pk_<id>_<secret>. */
  label() {
    const m = /^pk_([0-9a-f]{16})_/i.exec(this.key);
    return m ? `key ${m[1].slice(0, 8)}…` : 'a key';
  },

  render() {
    const state = this.problem ? 'refused' : this.key ? 'set' : 'none';
    const button = $('#key-button');
    button.dataset.state = state;
    $('#key-state').textContent = { refused: this.key ? 'refused' : 'needed', set: 'set', none: 'not set' }[state];
    button.title = this.key ? `API key: ${this.label()} (kept in this browser)` : 'API key: none';
    const note = $('#auth-note');
    note.hidden = !this.problem;
    if (this.problem) {
      const p = this.problem;
      $('#auth-note-text').textContent = `${this.key ? 'The server refused the API key' : 'The server needs an API key'}: ${errorLabel(p.code)} (${p.code}): ${p.message}`;
    }
  },
};

// ---------------------------------------------------------------------------
// Links to a job's images, as the server gives them (signed when auth is on)
// ---------------------------------------------------------------------------

const Links = {
  map: new Map(), // job id -> {result, original, at}
  signed: false, // the server signs its links: they expire, bare paths need a header
  refreshing: new Map(), // job id -> {promise, wants[]}
  queue: [],
  active: 0,
  passThrough: null, // a download link clicked again once its link is fresh

  /** Keep the links of an answer (upload, status, list item) for job `id`. */
  put(id, raw) {
    if (!id || !isObject(raw)) return;
    const result = safeLink(raw.result_url);
    const original = safeLink(raw.original_url);
    if (!result && !original) return;
    if (isSigned(result) || isSigned(original)) this.signed = true;
    this.map.delete(id);
    this.map.set(id, { result, original, at: now() });
    while (this.map.size > CONFIG.storedLinks) this.map.delete(this.map.keys().next().value);
  },

  clear() {
    this.map.clear();
    this.signed = false;
  },

  /** Bare paths would be refused: the server signs its links, or wants a key. */
  needed() {
    return this.signed || Boolean(Auth.key);
  },

  /** A usable link now ('' when it must be asked for): a fresh one the
   * server gave, or with auth off the bare path. */
  now(id, which) {
    const l = this.map.get(id);
    const url = l ? l[which] : '';
    if (url && (!isSigned(url) || now() - l.at < CONFIG.linkFreshMs)) return url;
    return this.needed() ? '' : urls[which](id);
  },

  /**
   * A link for `which` image of job `id`, asking the job's status for new
   * links when none is fresh, or when `force`d (a signed link that failed
   * to load may have expired). Never fails: at worst the stale link or the
   * bare path, which fail to load and say so.
   */
  async get(id, which, { force = false, wanted = () => true } = {}) {
    const known = this.now(id, which);
    if (known && !(force && isSigned(known))) return known;
    await this.refresh(id, wanted);
    const l = this.map.get(id);
    return this.now(id, which) || (l && l[which]) || urls[which](id);
  },

  /** One status request per job at a time, a few at once, newest first
   * (the cards on top); skipped once nobody `wanted` it (a card trimmed). */
  refresh(id, wanted) {
    let r = this.refreshing.get(id);
    if (!r) {
      r = { wants: [] };
      r.promise = new Promise((resolve) => {
        this.queue.push({ id, resolve, wanted: () => r.wants.some((f) => f()) });
      });
      this.refreshing.set(id, r);
      r.promise.then(() => this.refreshing.delete(id));
      queueMicrotask(() => this.drain());
    }
    r.wants.push(wanted);
    return r.promise;
  },

  drain() {
    while (this.active < CONFIG.linkConcurrency && this.queue.length) {
      const job = this.queue.pop();
      if (!job.wanted()) {
        job.resolve();
        continue;
      }
      this.active += 1;
      requestJson(urls.status(job.id))
        .then((raw) => normalizeJob(raw)) // keeps the links
        .catch(() => {})
        .finally(() => {
          this.active -= 1;
          job.resolve();
          this.drain();
        });
    }
  },

  /** A download link whose signed link went stale gets a new one first. */
  onClick(ev) {
    const a = ev.target instanceof Element ? ev.target.closest('a[data-link]') : null;
    if (!a) return;
    if (a === this.passThrough) {
      this.passThrough = null;
      return;
    }
    const id = a.dataset.linkId;
    const which = a.dataset.link;
    const fresh = this.now(id, which);
    if (fresh) {
      if (a.getAttribute('href') !== fresh) a.setAttribute('href', fresh);
      return;
    }
    ev.preventDefault();
    this.get(id, which).then((url) => {
      a.setAttribute('href', url);
      this.passThrough = a;
      a.click();
    });
  },
};

// ---------------------------------------------------------------------------
// Screen-reader announcements, coalesced so thousands of files stay readable
// ---------------------------------------------------------------------------

const Announcer = {
  el: null,
  done: 0,
  failures: [],
  messages: [],
  timer: 0,
  say(message) {
    this.messages.push(message);
    this.schedule();
  },
  jobDone() {
    this.done += 1;
    this.schedule();
  },
  failure(name, label) {
    this.failures.push(`${name}: ${label}`);
    this.schedule();
  },
  schedule() {
    if (!this.timer) this.timer = setTimeout(() => this.flush(), 1200);
  },
  flush() {
    this.timer = 0;
    const parts = this.messages.splice(0);
    if (this.done) parts.push(`${plural(this.done, 'file')} done`);
    if (this.failures.length > 3) parts.push(`${plural(this.failures.length, 'file')} failed`);
    else if (this.failures.length) parts.push(`Failed: ${this.failures.join('; ')}`);
    this.done = 0;
    this.failures = [];
    if (parts.length) this.el.textContent = `${parts.join('. ')}.`;
  },
};

// ---------------------------------------------------------------------------
// Transform builder, generated from GET /v1/transforms
// ---------------------------------------------------------------------------

const Builder = {
  storeKey: 'pipeline.transform.v1',
  ops: new Map(), // name -> {name, usage, params}
  presets: [], // {name, spec}
  defaultSpec: '',
  maxOps: 32,
  mode: 'default', // default | preset | custom
  preset: '',
  text: '',
  textProblems: [], // what the builder could not read in the text
  steps: [], // {key, op, values[]}
  inSync: true, // whether `steps` shows `text`
  nextKey: 1,
  rejected: null, // {query, message}: the server's verdict on a spec

  restore() {
    try {
      const saved = safeJson(localStorage.getItem(this.storeKey));
      if (isObject(saved)) {
        if (['default', 'preset', 'custom'].includes(saved.mode)) this.mode = saved.mode;
        this.preset = str(saved.preset, 200);
        this.text = str(saved.text, 4000);
      }
    } catch {
      /* defaults */
    }
  },

  persist() {
    try {
      localStorage.setItem(this.storeKey, JSON.stringify({ mode: this.mode, preset: this.preset, text: this.text }));
    } catch {
      /* not kept */
    }
  },

  /** What new uploads get: the query string and a label. */
  current() {
    if (this.mode === 'preset' && this.preset) {
      const p = this.presets.find((x) => x.name === this.preset);
      return { query: `preset=${enc(this.preset)}`, label: p ? p.spec : `preset ${this.preset}`, preset: this.preset };
    }
    const text = this.text.trim();
    if (this.mode === 'custom' && text) return { query: `transform=${enc(text)}`, label: text, preset: '' };
    return { query: '', label: this.defaultSpec || 'server default', preset: '' };
  },

  async load() {
    const status = $('#builder-status');
    status.hidden = false;
    status.replaceChildren('Loading the catalogue…');
    let cat;
    try {
      cat = await requestJson('/v1/transforms');
      if (!isObject(cat) || !Array.isArray(cat.operations)) throw new ApiError(200, 'bad_response', 'The catalogue is not in the expected shape.');
    } catch (err) {
      status.replaceChildren(
        h('span', { class: 'error-text', text: `Could not load the transforms: ${err.message}` }),
        ' ',
        h('button', { type: 'button', class: 'btn btn-small', text: 'Try again', onclick: () => this.load() }),
      );
      return;
    }
    this.ops.clear();
    for (const op of cat.operations) {
      if (!isObject(op) || typeof op.name !== 'string') continue;
      const params = (Array.isArray(op.params) ? op.params : []).filter(isObject).map((p) => ({
        name: str(p.name, 100),
        kind: ['integer', 'number', 'size', 'choice', 'text'].includes(p.kind) ? p.kind : 'text',
        required: p.required !== false,
        description: str(p.description, 500),
        choices: Array.isArray(p.choices) ? p.choices.map((c) => str(c, 100)) : [],
        min: num(p.min),
        max: num(p.max),
        default: p.default == null ? null : str(p.default, 100),
      }));
      this.ops.set(op.name, { name: str(op.name, 100), usage: str(op.usage, 500), params });
    }
    this.presets = (Array.isArray(cat.presets) ? cat.presets : [])
      .filter((p) => isObject(p) && typeof p.name === 'string')
      .map((p) => ({ name: str(p.name, 100), spec: str(p.spec, 1000) }));
    this.defaultSpec = str(cat.default_transform, 1000);
    this.maxOps = num(cat.max_operations) || 32;
    this.render();
    status.hidden = true;
    $('#builder-form').hidden = false;
  },

  render() {
    $('#default-spec').textContent = this.defaultSpec;

    const presetSelect = $('#preset-select');
    presetSelect.replaceChildren(...this.presets.map((p) => h('option', { value: p.name, text: p.name })));
    if (!this.presets.some((p) => p.name === this.preset)) this.preset = this.presets[0] ? this.presets[0].name : '';
    presetSelect.value = this.preset;
    const presetRadio = $('#builder-form input[name=mode][value=preset]');
    presetRadio.disabled = this.presets.length === 0;
    if (this.mode === 'preset' && !this.presets.length) this.mode = 'default';

    const opSelect = $('#op-select');
    opSelect.replaceChildren(...[...this.ops.keys()].map((name) => h('option', { value: name, text: name })));
    this.showUsage();

    $(`#builder-form input[name=mode][value=${this.mode}]`).checked = true;
    this.parseText();
    $('#spec-text').value = this.text;
    this.renderSteps();
    this.showMode();
    this.changed(false);
  },

  wire() {
    const form = $('#builder-form');
    form.addEventListener('submit', (ev) => ev.preventDefault());
    form.addEventListener('change', (ev) => {
      if (ev.target.name === 'mode') {
        this.mode = ev.target.value;
        this.showMode();
        this.changed();
      }
    });
    $('#preset-select').addEventListener('change', (ev) => {
      this.preset = ev.target.value;
      this.changed();
    });
    $('#op-select').addEventListener('change', () => this.showUsage());
    $('#add-step').addEventListener('click', () => this.addStep($('#op-select').value));
    $('#spec-text').addEventListener('input', (ev) => {
      this.text = ev.target.value;
      this.parseText();
      this.renderSteps();
      this.changed();
    });
    const steps = $('#steps');
    steps.addEventListener('input', (ev) => this.onParam(ev));
    steps.addEventListener('change', (ev) => this.onParam(ev));
    steps.addEventListener('click', (ev) => {
      const btn = ev.target.closest('button[data-action]');
      if (btn) this.onStepAction(btn);
    });
  },

  showMode() {
    $('#default-panel').hidden = this.mode !== 'default';
    $('#preset-panel').hidden = this.mode !== 'preset';
    $('#custom-panel').hidden = this.mode !== 'custom';
  },

  showUsage() {
    const op = this.ops.get($('#op-select').value);
    $('#op-usage').textContent = op ? op.usage : '';
  },

  /** After any change: the spec line, issues, storage. */
  changed(persist = true) {
    const cur = this.current();
    $('#applied-spec').textContent = cur.preset ? `${cur.preset} (${cur.label})` : cur.label;
    const p = this.presets.find((x) => x.name === this.preset);
    $('#preset-spec').textContent = p ? `Applies ${p.spec}` : '';
    this.showIssues();
    const verdict = $('#server-verdict');
    if (this.rejected && this.rejected.query === cur.query) {
      verdict.hidden = false;
      verdict.textContent = `The server refused this transform: ${this.rejected.message}`;
    } else {
      verdict.hidden = true;
      verdict.textContent = '';
    }
    if (persist) this.persist();
  },

  /** The server said 400 to uploads with `query`. */
  reject(query, message) {
    this.rejected = { query, message };
    this.changed(false);
  },

  // -- steps <-> text --------------------------------------------------------

  newStep(opName, values) {
    const op = this.ops.get(opName);
    const vals = op.params.map((p, i) => {
      if (values && values[i] != null) return values[i];
      return p.kind === 'choice' && p.required && p.choices.length ? p.choices[0] : '';
    });
    return { key: this.nextKey++, op: opName, values: vals };
  },

  stepText(step) {
    const op = this.ops.get(step.op);
    const vals = step.values.map((v) => v.trim());
    let last = vals.length;
    while (last > 0 && vals[last - 1] === '') last -= 1;
    const args = vals.slice(0, last).map((v, i) => (v === '' && op.params[i].default != null ? op.params[i].default : v));
    return [op.name, ...args].join(':');
  },

  /** Text from the steps (the builder is the source). */
  writeText() {
    this.text = this.steps.map((s) => this.stepText(s)).join(',');
    this.inSync = true;
    this.textProblems = [];
    $('#spec-text').value = this.text;
  },

  /** Steps from the text, when the builder can show it. */
  parseText() {
    const text = this.text.trim();
    this.textProblems = [];
    if (!text) {
      this.steps = [];
      this.inSync = true;
      return;
    }
    if (/^[[{]/.test(text)) {
      this.inSync = false;
      this.textProblems.push('A JSON spec is sent as written; the builder shows compact specs only.');
      return;
    }
    const steps = [];
    for (const [i, raw] of text.split(',').entries()) {
      const parts = raw.trim().split(':');
      const name = parts[0].trim();
      if (!name) {
        this.textProblems.push(`Operation ${i + 1} is empty.`);
        continue;
      }
      const op = this.ops.get(name);
      if (!op) {
        this.inSync = false;
        this.textProblems.push(`Unknown operation “${name}”.`);
        return;
      }
      const args = parts.slice(1);
      if (args.length > op.params.length) {
        this.inSync = false;
        this.textProblems.push(`${name} takes at most ${plural(op.params.length, 'argument')} (see its usage).`);
        return;
      }
      steps.push(this.newStep(name, args));
    }
    this.steps = steps;
    this.inSync = true;
  },

  addStep(opName) {
    if (!this.ops.has(opName)) return;
    if (this.inSync) {
      this.steps.push(this.newStep(opName));
      this.writeText();
    } else {
      this.text = this.text.trim() ? `${this.text.trim()},${opName}` : opName;
      $('#spec-text').value = this.text;
      this.parseText();
    }
    this.renderSteps();
    this.changed();
    const added = $('#steps').lastElementChild;
    const first = added && added.querySelector('input, select');
    if (first) first.focus();
  },

  onStepAction(btn) {
    const li = btn.closest('li[data-step]');
    const key = Number(li.dataset.step);
    const i = this.steps.findIndex((s) => s.key === key);
    if (i < 0) return;
    const action = btn.dataset.action;
    if (action === 'remove') this.steps.splice(i, 1);
    else if (action === 'up' && i > 0) [this.steps[i - 1], this.steps[i]] = [this.steps[i], this.steps[i - 1]];
    else if (action === 'down' && i < this.steps.length - 1) [this.steps[i + 1], this.steps[i]] = [this.steps[i], this.steps[i + 1]];
    this.writeText();
    this.renderSteps();
    this.changed();
    // Keep the keyboard where it was.
    let focus = null;
    if (action === 'remove') {
      const next = this.steps[Math.min(i, this.steps.length - 1)];
      focus = next ? $(`#steps li[data-step="${next.key}"] button[data-action=remove]`) : $('#op-select');
    } else {
      const li2 = $(`#steps li[data-step="${key}"]`);
      focus = li2 && (li2.querySelector(`button[data-action=${action}]:not(:disabled)`) || li2.querySelector('button[data-action]:not(:disabled)'));
    }
    if (focus) focus.focus();
  },

  onParam(ev) {
    const input = ev.target;
    if (!input.dataset || input.dataset.index == null) return;
    const li = input.closest('li[data-step]');
    const step = this.steps.find((s) => s.key === Number(li.dataset.step));
    if (!step) return;
    step.values[Number(input.dataset.index)] = input.value;
    this.writeText();
    this.showFieldError(input, step, Number(input.dataset.index));
    this.changed();
  },

  // -- validation (light: the server judges) ----------------------------------

  checkArg(param, value, laterSet) {
    const v = value.trim();
    if (v === '') {
      if (param.required) return `${param.name} is required.`;
      if (laterSet && param.default == null) return `${param.name} needs a value because a later argument is set.`;
      return '';
    }
    if (/[,:]/.test(v)) return `${param.name} cannot contain “,” or “:”.`;
    const range = (n) => {
      if (param.min != null && n < param.min) return `${param.name} must be at least ${param.min}.`;
      if (param.max != null && n > param.max) return `${param.name} must be at most ${param.max}.`;
      return '';
    };
    switch (param.kind) {
      case 'integer':
        return /^[-+]?\d+$/.test(v) ? range(Number(v)) : `${param.name} must be a whole number.`;
      case 'number':
        return v !== '' && Number.isFinite(Number(v)) ? range(Number(v)) : `${param.name} must be a number.`;
      case 'size': {
        const m = /^(\d*)x(\d*)$/i.exec(v) || /^(\d+)$/.exec(v);
        if (!m || (m[1] === '' && (m[2] || '') === '')) return `${param.name} must look like 800x600, 800x, x600 or 800.`;
        for (const side of [m[1], m[2]]) if (side) { const e = range(Number(side)); if (e) return e; }
        return '';
      }
      case 'choice':
        return param.choices.length && !param.choices.includes(v) ? `${param.name} must be one of ${param.choices.join(', ')}.` : '';
      default:
        return '';
    }
  },

  stepIssues(step) {
    const op = this.ops.get(step.op);
    return op.params.map((p, i) => this.checkArg(p, step.values[i] || '', step.values.slice(i + 1).some((x) => x.trim() !== '')));
  },

  showFieldError(input, step, index) {
    const msg = this.stepIssues(step)[index];
    const slot = document.getElementById(`${input.id}-err`);
    if (slot) slot.textContent = msg;
    input.setAttribute('aria-invalid', msg ? 'true' : 'false');
  },

  showIssues() {
    const list = $('#spec-issues');
    const issues = [...(this.textProblems || [])];
    if (this.mode === 'custom') {
      if (this.inSync) {
        this.steps.forEach((s, i) => {
          for (const msg of this.stepIssues(s)) if (msg) issues.push(`Step ${i + 1} (${s.op}): ${msg}`);
        });
        if (this.steps.length > this.maxOps) issues.push(`At most ${this.maxOps} operations are allowed.`);
      }
      if (!this.text.trim()) issues.push(`The spec is empty: uploads get the server default (${this.defaultSpec}).`);
    }
    list.replaceChildren(...issues.map((m) => h('li', { text: m })));
  },

  // -- rendering --------------------------------------------------------------

  renderSteps() {
    const ol = $('#steps');
    const custom = $('#custom-panel');
    custom.classList.toggle('out-of-sync', !this.inSync);
    ol.replaceChildren(...(this.inSync ? this.steps.map((s, i) => this.stepElement(s, i)) : []));
    const empty = $('#steps-empty');
    empty.hidden = this.inSync ? this.steps.length > 0 : false;
    empty.textContent = this.inSync
      ? 'No steps yet: add an operation below.'
      : 'The builder cannot show this spec; edit it as text below (new steps are appended to it).';
    $('#add-step').disabled = this.inSync && this.steps.length >= this.maxOps;
  },

  stepElement(step, i) {
    const op = this.ops.get(step.op);
    const n = this.steps.length;
    const label = `step ${i + 1} (${op.name})`;
    const tools = h(
      'div',
      { class: 'step-tools' },
      h('button', { type: 'button', class: 'btn btn-icon', 'data-action': 'up', 'aria-label': `Move ${label} up`, title: 'Move up', disabled: i === 0, text: '↑' }),
      h('button', { type: 'button', class: 'btn btn-icon', 'data-action': 'down', 'aria-label': `Move ${label} down`, title: 'Move down', disabled: i === n - 1, text: '↓' }),
      h('button', { type: 'button', class: 'btn btn-icon btn-danger', 'data-action': 'remove', 'aria-label': `Remove ${label}`, title: 'Remove', text: '✕' }),
    );
    const li = h(
      'li',
      { class: 'step', 'data-op': op.name, 'data-step': step.key, 'data-testid': 'step' },
      h('div', { class: 'step-head' }, h('span', { class: 'step-num', 'aria-hidden': 'true', text: String(i + 1) }), h('h3', { class: 'step-name', text: op.name }), tools),
      h('p', { class: 'help usage', text: op.usage }),
    );
    if (op.params.length) {
      li.append(h('div', { class: 'params' }, ...op.params.map((p, j) => this.paramField(step, p, j))));
    }
    return li;
  },

  paramField(step, p, j) {
    const id = `step${step.key}-p${j}`;
    const value = step.values[j] || '';
    let input;
    if (p.kind === 'choice') {
      input = h('select', { id });
      if (!p.required) input.append(h('option', { value: '', text: p.default != null ? `default (${p.default})` : '(none)' }));
      for (const c of p.choices) input.append(h('option', { value: c, text: c }));
      if (value && !p.choices.includes(value)) input.append(h('option', { value, text: `${value} (unknown)` }));
    } else if (p.kind === 'integer' || p.kind === 'number') {
      input = h('input', {
        id,
        type: 'number',
        step: p.kind === 'integer' ? '1' : 'any',
        inputmode: p.kind === 'integer' ? 'numeric' : 'decimal',
        min: p.min,
        max: p.max,
        placeholder: p.default != null ? p.default : '',
      });
    } else {
      input = h('input', {
        id,
        type: 'text',
        autocomplete: 'off',
        spellcheck: 'false',
        autocapitalize: 'off',
        placeholder: p.kind === 'size' ? 'e.g. 800x600' : p.default != null ? p.default : '',
      });
    }
    input.value = value;
    input.dataset.index = String(j);
    input.dataset.param = p.name;
    if (p.required) input.required = true;
    input.setAttribute('aria-describedby', `${id}-help ${id}-err`);
    const bits = [p.description];
    if ((p.kind === 'integer' || p.kind === 'number' || p.kind === 'size') && (p.min != null || p.max != null)) {
      bits.push(`${p.min != null ? p.min : '…'}–${p.max != null ? p.max : '…'}${p.kind === 'size' ? ' px per side' : ''}`);
    }
    if (!p.required && p.default != null) bits.push(`default ${p.default}`);
    const field = h(
      'div',
      { class: `field field-${p.kind}` },
      h('label', { for: id }, p.name, p.required ? null : h('span', { class: 'label-note', text: ' optional' })),
      input,
      h('p', { class: 'help', id: `${id}-help`, text: bits.filter(Boolean).join(' · ') }),
      h('p', { class: 'field-error', id: `${id}-err` }),
    );
    const msg = value ? this.stepIssues(step)[j] : '';
    if (msg) {
      field.lastElementChild.textContent = msg;
      input.setAttribute('aria-invalid', 'true');
    }
    return field;
  },
};

// ---------------------------------------------------------------------------
// Uploads: one file per request, a bounded number at once
// ---------------------------------------------------------------------------

const STATE_TEXT = {
  waiting: 'waiting',
  uploading: 'uploading',
  retrying: 'waiting (server busy)',
  queued: 'queued / transforming',
  done: 'done',
  failed: 'failed',
};

const Uploads = {
  entries: [], // every file of the session, in the order added
  queue: [], // files to send, FIFO
  head: 0,
  retryReady: [], // files whose Retry-After has passed: they go first
  active: new Set(), // uploads on the wire
  pending: new Map(), // job id -> entry, accepted and not finished
  byJob: new Map(), // job id -> entry
  counts: { waiting: 0, uploading: 0, retrying: 0, queued: 0, done: 0, failed: 0 },
  version: 0, // bumps when an entry changes state (list filters)
  pausedUntil: 0, // the server asked us to wait
  pumpTimer: 0,
  seq: 0,
  wireBytes: 0, // bytes sent, retries included (rate)
  totalBytes: 0, // sizes of the session's files
  acceptedBytes: 0, // sizes of those the server accepted
  retryable: 0, // failed files worth another try
  batch: null, // {start, end, files, bytes} of the current run

  adding: Promise.resolve(),

  /** Queue files (with the transform chosen now). */
  add(items) {
    if (!items.length) return;
    const transform = Builder.current();
    this.adding = this.adding.then(() => this.addInChunks(items, transform));
  },

  /**
   * Reading a picked file's size can stat it on the main thread: thousands
   * are taken in chunks, and the first ones start uploading meanwhile.
   */
  async addInChunks(items, transform) {
    for (let i = 0; i < items.length; i += CONFIG.addChunk) {
      if (i) await new Promise((resolve) => setTimeout(resolve, 0));
      if (!this.batch || this.batch.end) this.batch = { start: now(), end: 0, files: 0, wireStart: this.wireBytes };
      const chunk = items.slice(i, i + CONFIG.addChunk);
      for (const { file, path } of chunk) this.addOne(file, path, transform);
      this.batch.files += chunk.length;
      this.version += 1;
      View.changed();
      this.pump();
    }
    Announcer.say(`Added ${plural(items.length, 'file')}; transform ${transform.label}`);
  },

  addOne(file, path, transform) {
    const e = {
      key: ++this.seq,
      file,
      name: path || file.name,
      size: file.size,
      transform,
      state: 'waiting',
      loaded: 0, // bytes of the request sent (this attempt)
      total: 0, // bytes of the request
      attempts: 0,
      busyTries: 0, // 503/429 answers and connection failures so far
      idemKey: '', // Idempotency-Key of the upload (UUID v7)
      idemQuery: '', // the transform it was made for
      jobId: '',
      job: null, // the finished job
      input: null, // format and size the server read at upload
      spec: '',
      error: null,
      retryable: false,
      keyRefused: false, // failed with a 401: a new key sends it again, once
      keyResent: false, // sent again because the key changed while it was on the wire
      sentKey: '', // the key its last attempt carried
      retryAt: 0,
      acceptedAt: 0,
      nextCheckAt: 0, // when to ask for its status if no event came
      checks: 0,
      checking: false,
      xhr: null,
      timer: 0,
      inQueue: false, // has a place in the queue
      rev: 0, // bumps on any change, for the list's rows
    };
    this.entries.push(e);
    this.enqueue(e);
    this.counts.waiting += 1;
    this.totalBytes += e.size;
  },

  busy() {
    const c = this.counts;
    return c.waiting + c.uploading + c.retrying + c.queued > 0;
  },

  sending() {
    const c = this.counts;
    return c.waiting + c.uploading + c.retrying > 0;
  },

  setState(e, state) {
    if (e.state === state) {
      e.rev += 1;
      return;
    }
    this.counts[e.state] -= 1;
    this.counts[state] += 1;
    e.state = state;
    e.rev += 1;
    this.version += 1;
    if (!this.busy() && this.batch && !this.batch.end) {
      this.batch.end = now();
      const c = this.counts;
      Announcer.say(`All files finished: ${fmtInt(c.done)} done, ${fmtInt(c.failed)} failed`);
    }
    View.changed();
  },

  pump() {
    const wait = this.pausedUntil - now();
    if (wait > 0) {
      if (!this.pumpTimer) {
        this.pumpTimer = setTimeout(() => {
          this.pumpTimer = 0;
          this.pump();
        }, wait);
      }
      return;
    }
    while (this.active.size < CONFIG.uploadConcurrency) {
      const e = this.nextWaiting();
      if (!e) break;
      this.send(e);
    }
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  },

  /** The next file to send: those back from a Retry-After first. */
  nextWaiting() {
    for (;;) {
      const e = this.retryReady.length ? this.retryReady.shift() : this.head < this.queue.length ? this.queue[this.head++] : null;
      if (!e) return null;
      e.inQueue = false;
      if (e.state === 'waiting') return e; // not cancelled meanwhile
    }
  },

  enqueue(e, first = false) {
    if (e.inQueue) return; // still has its place
    e.inQueue = true;
    (first ? this.retryReady : this.queue).push(e);
  },

  send(e) {
    const xhr = new XMLHttpRequest();
    e.xhr = xhr;
    e.loaded = 0;
    e.total = 0;
    e.attempts += 1;
    this.active.add(e);
    this.setState(e, 'uploading');
    let last = 0;
    xhr.upload.addEventListener('progress', (ev) => {
      this.wireBytes += ev.loaded - last;
      last = ev.loaded;
      e.loaded = ev.loaded;
      e.total = ev.lengthComputable ? ev.total : 0;
      e.rev += 1;
      View.changed();
    });
    const finish = (fn) => () => {
      this.active.delete(e);
      e.xhr = null;
      fn();
      this.pump();
    };
    xhr.addEventListener('load', finish(() => this.answered(e, xhr)));
    // A broken or stalled connection. Safe to send again: the
    // Idempotency-Key makes a second copy of an upload the server did get
    // answer with the same job.
    const lost = finish(() => {
      if (e.busyTries < CONFIG.busyRetries) {
        this.retryLater(e, Math.min(CONFIG.retryAfterMaxS, 2 ** e.busyTries));
        return;
      }
      this.fail(e, {
        code: 'network',
        message: `The server could not be reached (${plural(e.busyTries + 1, 'attempt')}).`,
        retryable: true,
      });
    });
    xhr.addEventListener('error', lost);
    xhr.addEventListener('timeout', lost);
    xhr.addEventListener('abort', finish(() => this.fail(e, { code: 'cancelled', message: 'Cancelled during the upload.', retryable: true })));
    xhr.open('POST', `/v1/images${e.transform.query ? `?${e.transform.query}` : ''}`);
    // A stalled connection ends as a failure (retried under the same key).
    xhr.timeout = CONFIG.uploadTimeoutMs + Math.round(e.size / 64);
    xhr.setRequestHeader('Accept', 'application/json');
    // One key per file and transform: a resend after a lost answer is
    // the same job, a resend with another transform a new one.
    if (!e.idemKey || e.idemQuery !== e.transform.query) {
      e.idemKey = uuidv7();
      e.idemQuery = e.transform.query;
    }
    xhr.setRequestHeader('Idempotency-Key', e.idemKey);
    e.sentKey = Auth.key;
    for (const [name, value] of Object.entries(Auth.header('/v1/images', e.sentKey))) xhr.setRequestHeader(name, value);
    const form = new FormData();
    form.append('files', e.file, e.file.name || 'image');
    xhr.send(form);
  },

  answered(e, xhr) {
    const status = xhr.status;
    const body = xhr.responseText;
    if (status === 200 || status === 202) {
      const json = safeJson(body);
      const img = json && Array.isArray(json.images) ? json.images[0] : null;
      if (!isObject(img) || typeof img.id !== 'string' || !img.id) {
        this.fail(e, { code: 'bad_response', message: `The server answered ${status} but its answer could not be read.` });
        return;
      }
      this.accepted(e, img);
      return;
    }
    const err = errorFromAnswer(status, xhr.statusText, xhr.getResponseHeader('Content-Type'), body);
    if (status === 401 || status === 403) {
      // Refused for the key, not for the file: not retried by itself (the
      // server decides from the headers, every copy would be refused).
      // A 401 opens the key prompt; a new key sends it once more.
      if (status === 401 && Auth.key && e.sentKey !== Auth.key && !e.keyResent) {
        // Sent before the key was replaced: once more with the new one.
        e.keyResent = true;
        this.setState(e, 'waiting');
        this.enqueue(e, true);
        return;
      }
      if (status === 401) Auth.refused(err, e.sentKey);
      this.fail(e, { code: err.code, message: err.message, retryable: true });
      e.keyRefused = status === 401;
      return;
    }
    if (status === 503 || status === 429 || (status === 409 && err.code === 'idempotency_key_in_use')) {
      if (e.busyTries < CONFIG.busyRetries) {
        this.retryLater(e, retryAfterSeconds(xhr.getResponseHeader('Retry-After')));
        return;
      }
      err.message = `Still refused after ${plural(e.busyTries + 1, 'attempt')}: ${err.message}`;
    }
    if (status === 400 && (err.code === 'invalid_input' || err.code === 'invalid_query')) {
      // A spec or preset the server refuses fails every file that would
      // carry it: do not send them only to hear the same answer.
      this.rejectTransform(e.transform.query, err);
    }
    this.fail(e, err);
  },

  accepted(e, img) {
    e.jobId = str(img.id, 64);
    Links.put(e.jobId, img); // its result and original, signed when auth is on
    e.input = { format: str(img.format, 40), width: num(img.width), height: num(img.height) };
    e.spec = str(img.spec, 1000);
    e.acceptedAt = now();
    e.nextCheckAt = e.acceptedAt + CONFIG.firstCheckMs;
    this.acceptedBytes += e.size;
    this.byJob.set(e.jobId, e);
    this.pending.set(e.jobId, e);
    Names.set(e.jobId, e.name);
    Gallery.rename(e.jobId);
    this.setState(e, 'queued');
    const early = Jobs.takeRecent(e.jobId);
    if (early) this.finished(e, early);
  },

  retryLater(e, seconds) {
    e.busyTries += 1;
    const ms = seconds * 1000 + Math.random() * 250;
    e.retryAt = now() + ms;
    this.pausedUntil = Math.max(this.pausedUntil, now() + seconds * 1000);
    this.setState(e, 'retrying');
    e.timer = setTimeout(() => {
      e.timer = 0;
      if (e.state !== 'retrying') return;
      this.setState(e, 'waiting');
      this.enqueue(e, true);
      this.pump();
    }, ms);
  },

  rejectTransform(query, err) {
    Builder.reject(query, err.message);
    for (const list of [this.retryReady, this.queue.slice(this.head)]) {
      for (const other of list) {
        if (other.state === 'waiting' && other.transform.query === query) {
          this.fail(other, { code: err.code, message: `Not sent: the server refused the transform (${err.message})` });
        }
      }
    }
  },

  fail(e, err) {
    // The server names the file first; the row already does.
    const code = str(err.code, 100) || 'failed';
    e.error = { code, message: tidyMessage(err.message, code, e.name.replace(/^.*[\\/]/, '')) || 'Failed.' };
    e.retryable = Boolean(err.retryable);
    if (e.retryable) this.retryable += 1;
    if (e.jobId) this.pending.delete(e.jobId);
    this.setState(e, 'failed');
    if (e.error.code !== 'cancelled') Announcer.failure(e.name, errorLabel(e.error.code));
  },

  /** A job of ours finished (event or status check). */
  finished(e, job) {
    if (e.state !== 'queued') return;
    this.pending.delete(e.jobId);
    e.job = job;
    if (job.state === 'done') {
      this.setState(e, 'done');
      Announcer.jobDone();
    } else {
      this.fail(e, job.error || { code: 'failed', message: 'The job failed without a reason.' });
    }
  },

  cancel(e) {
    if (e.state === 'uploading' && e.xhr) e.xhr.abort();
    else if (e.state === 'waiting' || e.state === 'retrying') {
      clearTimeout(e.timer);
      e.timer = 0;
      this.fail(e, { code: 'cancelled', message: 'Cancelled before it was sent.', retryable: true });
    }
  },

  cancelAll() {
    const victims = this.entries.filter((e) => e.state === 'waiting' || e.state === 'retrying' || e.state === 'uploading');
    this.pausedUntil = 0;
    for (const e of victims) this.cancel(e);
    if (victims.length) Announcer.say(`Cancelled ${plural(victims.length, 'file')}`);
  },

  retry(e) {
    if (e.state !== 'failed' || !e.retryable) return;
    if (!this.batch || this.batch.end) this.batch = { start: now(), end: 0, files: 0, wireStart: this.wireBytes };
    this.batch.files += 1;
    e.error = null;
    e.retryable = false;
    e.keyRefused = false;
    this.retryable -= 1;
    e.busyTries = 0;
    e.transform = Builder.current();
    this.setState(e, 'waiting');
    this.enqueue(e);
    this.pump();
  },

  retryAll() {
    const list = this.entries.filter((e) => e.state === 'failed' && e.retryable);
    for (const e of list) this.retry(e);
    if (list.length) Announcer.say(`Retrying ${plural(list.length, 'file')}`);
  },

  clearFinished() {
    const keep = this.entries.filter((e) => e.state !== 'done' && e.state !== 'failed');
    const removed = this.entries.length - keep.length;
    for (const e of this.entries) {
      if (e.state === 'done' || e.state === 'failed') {
        this.byJob.delete(e.jobId);
        this.totalBytes -= e.size;
        if (e.jobId) this.acceptedBytes -= e.size;
        if (e.retryable) this.retryable -= 1;
        e.file = null; // let the browser free it
      }
    }
    this.entries = keep;
    this.counts.done = 0;
    this.counts.failed = 0;
    this.version += 1;
    if (!keep.length) this.batch = null;
    Announcer.say(`Cleared ${plural(removed, 'finished file')}`);
    View.changed();
  },

  /** Bytes of the session sent so far, as file sizes (for "x of y"). */
  progressBytes() {
    let sent = this.acceptedBytes;
    for (const e of this.active) if (e.total) sent += (e.size * e.loaded) / e.total;
    return { sent, total: this.totalBytes };
  },
};

// ---------------------------------------------------------------------------
// The session's list: overall progress, filters and a virtual list of rows
// ---------------------------------------------------------------------------

const View = {
  filter: 'all',
  filtered: null,
  filteredKey: '',
  rows: new Map(), // entry -> {el, refs, index, setSize, rev}
  entryOf: new WeakMap(), // row element -> entry
  samples: [], // {t, wire, finished} for rates

  init() {
    this.schedule = frameThrottle(() => this.render(), 100);
    this.viewport = $('#upload-list');
    this.body = $('#upload-rows');
    this.rowHeight = CONFIG.rowHeight;
    // Scroll position and height are kept from their events, so that a
    // render never forces a layout of the page by reading them.
    this.scrollTop = 0;
    this.height = 0;
    this.viewport.addEventListener(
      'scroll',
      () => {
        this.scrollTop = this.viewport.scrollTop;
        this.changed(true); // rows must be there as they scroll in
      },
      { passive: true },
    );
    new ResizeObserver((entries) => {
      this.height = entries[entries.length - 1].contentRect.height;
      // Rows are all the same height (that is what makes the list virtual);
      // the stylesheet makes them taller on narrow screens.
      const rowHeight = parseFloat(getComputedStyle(this.viewport).getPropertyValue('--row-h')) || CONFIG.rowHeight;
      if (rowHeight !== this.rowHeight) {
        this.rowHeight = rowHeight;
        for (const row of this.rows.values()) row.index = -1; // reposition
      }
      this.changed(true);
    }).observe(this.viewport);
    $('#filters').addEventListener('change', (ev) => {
      if (ev.target.name !== 'filter') return;
      this.filter = ev.target.value;
      this.viewport.scrollTop = 0;
      this.scrollTop = 0;
      this.changed(true);
    });
    this.body.addEventListener('click', (ev) => {
      const btn = ev.target.closest('button.urow-action');
      const e = btn && this.entryOf.get(btn.closest('.urow'));
      if (!e) return;
      if (btn.dataset.action === 'cancel') Uploads.cancel(e);
      else if (btn.dataset.action === 'retry') Uploads.retry(e);
      else if (btn.dataset.action === 'compare' && e.job) Compare.open(e.job, btn);
    });
    $('#retry-failed').addEventListener('click', () => Uploads.retryAll());
    $('#cancel-all').addEventListener('click', () => Uploads.cancelAll());
    $('#clear-finished').addEventListener('click', () => Uploads.clearFinished());
    setInterval(() => this.sample(), 1000);
  },

  changed(urgent = false) {
    if (this.schedule) this.schedule(urgent);
  },

  sample() {
    if (!Uploads.busy()) {
      this.samples.length = 0;
      return;
    }
    const c = Uploads.counts;
    this.samples.push({ t: now(), wire: Uploads.wireBytes, finished: c.done + c.failed });
    while (this.samples.length > 8) this.samples.shift();
    this.changed();
  },

  items() {
    if (this.filter === 'all') return Uploads.entries;
    const key = `${this.filter}:${Uploads.version}`;
    if (this.filteredKey !== key) {
      const want =
        this.filter === 'active'
          ? (s) => s === 'waiting' || s === 'uploading' || s === 'retrying' || s === 'queued'
          : (s) => s === this.filter;
      this.filtered = Uploads.entries.filter((e) => want(e.state));
      this.filteredKey = key;
    }
    return this.filtered;
  },

  render() {
    const c = Uploads.counts;
    const total = Uploads.entries.length;
    const finished = c.done + c.failed;
    const active = c.waiting + c.uploading + c.retrying + c.queued;
    const section = $('#queue');
    section.dataset.total = String(total);
    section.dataset.done = String(c.done);
    section.dataset.failed = String(c.failed);
    section.dataset.active = String(active);

    $('#queue-empty').hidden = total > 0;
    $('#overall').hidden = total === 0;
    $('#filters').hidden = total === 0;
    this.viewport.hidden = total === 0;
    for (const [k, v] of Object.entries({ all: total, active, done: c.done, failed: c.failed })) {
      $(`#filters [data-count=${k}]`).textContent = fmtInt(v);
    }
    const retryable = Uploads.retryable;
    const retryBtn = $('#retry-failed');
    retryBtn.hidden = retryable === 0;
    retryBtn.textContent = `Retry failed (${fmtInt(retryable)})`;
    $('#cancel-all').hidden = !Uploads.sending();
    $('#clear-finished').hidden = finished === 0;

    if (total) {
      const bar = $('#overall-progress');
      bar.max = total;
      bar.value = finished;
      $('#overall-label').textContent = `${fmtInt(finished)} of ${plural(total, 'file')} finished`;
      const bytes = Uploads.progressBytes();
      const parts = [`${fmtBytes(bytes.sent)} of ${fmtBytes(bytes.total)} uploaded`];
      if (c.uploading) parts.push(`${fmtInt(c.uploading)} uploading`);
      if (c.retrying) parts.push(`${fmtInt(c.retrying)} waiting (server busy)`);
      if (c.queued) parts.push(`${fmtInt(c.queued)} queued / transforming`);
      if (c.failed) parts.push(`${fmtInt(c.failed)} failed`);
      $('#overall-bytes').textContent = parts.join(' · ');
      $('#overall-rate').textContent = this.rateText();
    }
    this.renderRows();
  },

  rateText() {
    const b = Uploads.batch;
    if (!b) return '';
    if (b.end) {
      const secs = Math.max(0.001, (b.end - b.start) / 1000);
      return `${plural(b.files, 'file')} in ${secs.toFixed(1)} s · ${(b.files / secs).toFixed(1)} files/s · ${fmtBytes((Uploads.wireBytes - b.wireStart) / secs)}/s`;
    }
    const s = this.samples;
    if (s.length < 2) return 'measuring…';
    const a = s[0];
    const z = s[s.length - 1];
    const secs = (z.t - a.t) / 1000;
    return `${((z.finished - a.finished) / secs).toFixed(1)} files/s · ${fmtBytes((z.wire - a.wire) / secs)}/s`;
  },

  renderRows() {
    const items = this.items();
    const n = items.length;
    const rowH = this.rowHeight;
    this.body.style.height = `${n * rowH}px`;
    const top = this.scrollTop;
    const height = this.height || 8 * rowH;
    const first = Math.max(0, Math.floor(top / rowH) - CONFIG.overscanRows);
    const last = Math.min(n, Math.ceil((top + height) / rowH) + CONFIG.overscanRows);
    const shown = new Set();
    for (let i = first; i < last; i++) {
      const e = items[i];
      shown.add(e);
      let row = this.rows.get(e);
      if (!row) {
        row = this.createRow();
        this.entryOf.set(row.el, e);
        this.rows.set(e, row);
        this.body.append(row.el);
      }
      if (row.index !== i || row.setSize !== n) {
        row.index = i;
        row.setSize = n;
        row.el.style.transform = `translateY(${i * rowH}px)`;
        row.el.setAttribute('aria-posinset', String(i + 1));
        row.el.setAttribute('aria-setsize', String(n));
      }
      if (row.rev !== e.rev) {
        row.rev = e.rev;
        this.updateRow(row, e);
      }
    }
    for (const [e, row] of this.rows) {
      if (shown.has(e)) continue;
      if (row.el.contains(document.activeElement) && items.includes(e)) continue; // keep focus
      row.el.remove();
      this.rows.delete(e);
    }
  },

  createRow() {
    const refs = {
      name: h('span', { class: 'urow-name' }),
      size: h('span', { class: 'urow-size' }),
      state: h('span', { class: 'urow-state' }),
      progress: h('progress', { class: 'urow-progress', max: '100', value: '0' }),
      detail: h('span', { class: 'urow-detail' }),
      action: h('button', { type: 'button', class: 'btn btn-small urow-action' }),
    };
    const el = h(
      'div',
      { class: 'urow', role: 'listitem', 'data-testid': 'upload-row' },
      h('span', { class: 'urow-dot', 'aria-hidden': 'true' }),
      h(
        'div',
        { class: 'urow-main' },
        h('div', { class: 'urow-top' }, refs.name, refs.size, refs.state),
        h('div', { class: 'urow-bottom' }, refs.progress, refs.detail),
      ),
      refs.action,
    );
    return { el, refs, index: -1, setSize: -1, rev: -1 };
  },

  updateRow(row, e) {
    const r = row.refs;
    const d = row.el.dataset;
    d.state = e.state;
    d.name = e.name;
    if (e.jobId) d.jobId = e.jobId;
    else delete d.jobId;
    if (e.error) d.errorCode = e.error.code;
    else delete d.errorCode;
    r.name.textContent = e.name;
    r.name.title = e.name;
    r.size.textContent = fmtBytes(e.size);

    const pct = e.total ? Math.min(100, Math.floor((100 * e.loaded) / e.total)) : 0;
    r.state.textContent = e.state === 'uploading' ? `uploading ${pct} %` : STATE_TEXT[e.state];

    const showBar = e.state === 'uploading';
    r.progress.hidden = !showBar;
    if (showBar) {
      r.progress.value = pct;
      r.progress.setAttribute('aria-label', `Upload of ${e.name}`);
    }
    let detail = '';
    const job = e.job;
    switch (e.state) {
      case 'waiting':
        detail = e.attempts ? 'waiting to be sent again' : 'waiting to be sent';
        break;
      case 'retrying':
        detail = `server busy: trying again at ${new Date(e.retryAt).toLocaleTimeString()} (attempt ${e.busyTries + 1} of ${CONFIG.busyRetries + 1})`;
        break;
      case 'queued':
        detail = `${e.input ? `${fmtDims(e.input)} ${fmtFormat(e.input)} · ` : ''}${e.spec || e.transform.label}`;
        break;
      case 'done':
        detail = job
          ? `${fmtDims(job.original || e.input)} → ${fmtDims(job.result)} · ${fmtFormat(job.result)} · ${fmtBytes(job.result && job.result.size)}`
          : 'done';
        break;
      case 'failed':
        detail = `${errorLabel(e.error.code)} (${e.error.code}): ${e.error.message}`;
        break;
      default:
    }
    r.detail.textContent = detail;
    r.detail.title = detail;
    r.detail.classList.toggle('error-text', e.state === 'failed');

    const act = r.action;
    let action = '';
    if (e.state === 'waiting' || e.state === 'uploading' || e.state === 'retrying') action = 'cancel';
    else if (e.state === 'failed' && e.retryable) action = 'retry';
    else if (e.state === 'done' && job) action = 'compare';
    act.disabled = !action; // hidden by CSS, keeps the column aligned
    act.dataset.action = action;
    act.textContent = { compare: 'Compare', retry: 'Retry', cancel: 'Cancel' }[action] || '';
    if (action) act.setAttribute('aria-label', `${act.textContent} ${e.name}`);
    else act.removeAttribute('aria-label');
  },
};

// ---------------------------------------------------------------------------
// Job completions: one EventSource, plus a light status-check fallback
// ---------------------------------------------------------------------------

const Jobs = {
  source: null,
  retryMs: 1000,
  timer: 0,
  gen: 0, // bumps at every (re)connection: answers for an older one are dropped
  recent: new Map(), // job id -> {job, at}: events no upload claimed yet
  checks: [],
  checking: 0,

  /**
   * (Re)open the event stream. An EventSource cannot send a header, so it
   * opens a link from GET /v1/events/link (signed, valid for an hour, when
   * the API authenticates; the bare path when it does not).
   */
  async connect() {
    const gen = ++this.gen;
    clearTimeout(this.timer);
    this.timer = 0;
    if (this.source) this.source.close();
    this.source = null;
    let url = '';
    try {
      const link = await requestJson('/v1/events/link');
      url = isObject(link) ? safeLink(link.url) : '';
      if (!url) throw new ApiError(200, 'bad_response', 'The event stream link is not in the expected shape.');
    } catch (err) {
      if (gen !== this.gen) return;
      if (err.status === 404) url = '/v1/events'; // a server without links
      else if (err.status === 401 || err.status === 403) {
        // Not without another key: a new one reconnects (Auth.changed).
        setConnection('offline', err.status === 401 ? 'Offline · needs an API key' : `Offline · ${errorLabel(err.code).toLowerCase()}`);
        return;
      } else {
        this.reconnectLater();
        return;
      }
    }
    if (gen === this.gen) this.open(url);
  },

  /** Try again after a pause that doubles while it keeps failing. */
  reconnectLater() {
    const ms = this.retryMs;
    if (ms <= 1000) setConnection('reconnecting', 'Reconnecting…');
    else setConnection('offline', `Offline · retrying in ${Math.round(ms / 1000)} s`);
    this.timer = setTimeout(() => this.connect(), ms);
    this.retryMs = Math.min(ms * 2, CONFIG.eventsRetryMaxMs);
  },

  open(url) {
    const es = new EventSource(url);
    this.source = es;
    es.addEventListener('open', () => {
      this.retryMs = 1000;
      setConnection('live', 'Live');
      // Events may have been missed while (re)connecting: check what waits.
      for (const e of Uploads.pending.values()) e.nextCheckAt = 0;
      this.sweep();
    });
    es.addEventListener('error', () => {
      if (this.source !== es) return;
      // The browser would reconnect to the same link, which may have
      // expired: close it, and open a new one.
      es.close();
      this.source = null;
      this.reconnectLater();
    });
    for (const kind of ['done', 'failed']) {
      es.addEventListener(kind, (ev) => {
        const job = normalizeJob(safeJson(ev.data));
        if (!job) return;
        if (!job.id) job.id = str(ev.lastEventId, 64);
        if (job.state === 'pending') job.state = kind;
        if (job.id) this.finished(job, 'event');
      });
    }
  },

  /** A job finished: the session list, the gallery, the chart. */
  finished(job, via) {
    Ops.record(job, via);
    const e = Uploads.byJob.get(job.id);
    if (e) Uploads.finished(e, job);
    else this.recent.set(job.id, { job, at: now() });
    Gallery.addLive(job);
  },

  takeRecent(id) {
    const hit = this.recent.get(id);
    if (!hit) return null;
    this.recent.delete(id);
    return hit.job;
  },

  sweep() {
    const t = now();
    for (const e of Uploads.pending.values()) {
      if (!e.checking && t >= e.nextCheckAt) {
        e.checking = true;
        this.checks.push(e);
      }
    }
    for (const [id, hit] of this.recent) if (t - hit.at > CONFIG.recentEventsMs) this.recent.delete(id);
    this.drain();
  },

  drain() {
    while (this.checking < CONFIG.checkConcurrency && this.checks.length) {
      const e = this.checks.shift();
      if (e.state !== 'queued') {
        e.checking = false;
        continue;
      }
      this.checking += 1;
      this.check(e).finally(() => {
        this.checking -= 1;
        e.checking = false;
        this.drain();
      });
    }
  },

  async check(e) {
    let job = null;
    try {
      job = normalizeJob(await requestJson(urls.status(e.jobId)));
    } catch (err) {
      // Unreachable: try later. Unknown: another API process may not have
      // it yet; unknown check after check, it has gone (expired, deleted).
      if (err instanceof ApiError && err.status === 404) {
        e.missing = (e.missing || 0) + 1;
        if (e.missing >= CONFIG.goneAfterChecks) {
          Uploads.fail(e, { code: 'job_gone', message: 'The server no longer knows this job (expired or deleted).', retryable: true });
          return;
        }
      }
    }
    if (job && (job.state === 'done' || job.state === 'failed')) {
      if (!job.id) job.id = e.jobId;
      this.finished(job, 'check');
      return;
    }
    e.checks += 1;
    e.nextCheckAt = now() + Math.min(CONFIG.maxCheckMs, CONFIG.laterCheckMs * 2 ** (e.checks - 1));
  },
};

function setConnection(state, text) {
  const el = $('#conn');
  el.dataset.state = state;
  $('#conn-text').textContent = text;
  el.title = state === 'live' ? 'Completions arrive live from the server' : `${text}: live completions are interrupted; pending files are checked when they resume`;
}

// ---------------------------------------------------------------------------
// Gallery: the archive, paged as you scroll, with live completions on top
// ---------------------------------------------------------------------------

const Gallery = {
  cards: new Map(), // job id -> {li, job}
  incoming: new Map(), // finished jobs waiting for the next render
  cursor: '',
  end: false,
  loading: false,
  started: false,
  sentinelVisible: false,
  gen: 0, // bumps on reset: a page asked for before it is dropped

  init() {
    this.grid = $('#gallery-grid');
    this.scheduleIncoming = frameThrottle(() => this.flushIncoming(), 250);
    this.status = $('#gallery-status');
    $('#gallery-retry').addEventListener('click', () => this.loadMore());
    new IntersectionObserver(
      (entries) => {
        this.sentinelVisible = entries.some((x) => x.isIntersecting);
        if (this.sentinelVisible) this.loadMore();
      },
      { rootMargin: '800px 0px' },
    ).observe($('#gallery-sentinel'));
    this.grid.addEventListener('click', (ev) => this.onClick(ev));
  },

  /** Empty, to load again from the start (another key: another tenant, perhaps). */
  reset() {
    this.gen += 1;
    for (const img of this.grid.querySelectorAll('img')) unloadImage(img);
    this.grid.replaceChildren();
    this.cards.clear();
    this.incoming.clear();
    this.cursor = '';
    this.end = false;
    this.loading = false;
    this.started = false;
    this.updateStatus();
  },

  async loadMore() {
    if (this.loading || this.end) return;
    const gen = this.gen;
    this.loading = true;
    $('#gallery-retry').hidden = true;
    this.status.textContent = this.cards.size ? 'Loading more…' : 'Loading the gallery…';
    let page;
    try {
      page = await requestJson(`/v1/images?limit=${CONFIG.galleryPage}${this.cursor ? `&cursor=${enc(this.cursor)}` : ''}`);
      if (!isObject(page) || !Array.isArray(page.items)) throw new ApiError(200, 'bad_response', 'The list is not in the expected shape.');
    } catch (err) {
      if (gen !== this.gen) return;
      this.loading = false;
      this.status.textContent = `Could not load the gallery: ${err.message}`;
      $('#gallery-retry').hidden = false;
      return;
    }
    if (gen !== this.gen) return;
    this.started = true;
    const frag = document.createDocumentFragment();
    for (const raw of page.items) {
      const job = normalizeJob(raw);
      if (!job || !job.id || this.cards.has(job.id)) continue;
      frag.append(this.card(job));
    }
    this.grid.append(frag);
    this.cursor = typeof page.next_cursor === 'string' ? page.next_cursor : '';
    this.end = !this.cursor;
    this.loading = false;
    this.updateStatus();
    // Still at the bottom (a tall screen): the observer will not fire again.
    if (!this.end) {
      requestAnimationFrame(() => {
        const r = $('#gallery-sentinel').getBoundingClientRect();
        if (r.top < window.innerHeight + 800) this.loadMore();
      });
    }
  },

  updateStatus() {
    const n = this.cards.size;
    this.grid.dataset.count = String(n);
    $('#gallery-count').textContent = n ? `${plural(n, 'image')} shown` : '';
    if (!this.started) return;
    if (!n) this.status.textContent = this.end ? 'No images yet: results appear here as soon as they are done.' : '';
    else this.status.textContent = this.end ? 'That is everything.' : '';
  },

  /** A job that just finished goes on top (batched: a few DOM changes a second). */
  addLive(job) {
    if (this.cards.has(job.id) || this.incoming.has(job.id)) return;
    this.incoming.set(job.id, job);
    this.scheduleIncoming();
  },

  flushIncoming() {
    const frag = document.createDocumentFragment();
    // Newest first, like the archive's order.
    for (const j of [...this.incoming.values()].reverse()) if (!this.cards.has(j.id)) frag.append(this.card(j));
    this.incoming.clear();
    this.grid.prepend(frag);
    this.trim();
    this.updateStatus();
  },

  /** Keep the page light when thousands of jobs finish (a bulk upload, or
   * another client of the tenant): the oldest cards go, and scrolling down
   * loads them again from the archive. */
  trim() {
    let extra = this.cards.size - CONFIG.galleryMaxCards;
    if (extra <= 0) return;
    while (extra > 0 && this.grid.lastElementChild) {
      const li = this.grid.lastElementChild;
      li.remove();
      for (const img of li.querySelectorAll('img')) unloadImage(img);
      if (li.dataset.jobId) this.cards.delete(li.dataset.jobId);
      extra -= 1;
    }
    const last = this.grid.lastElementChild;
    if (last && last.dataset.jobId) {
      this.cursor = last.dataset.jobId;
      this.end = false;
    }
  },

  rename(id) {
    const c = this.cards.get(id);
    if (!c) return;
    const name = displayName(id);
    const el = c.li.querySelector('.card-name');
    el.textContent = name;
    el.title = name;
    const done = c.job.state === 'done';
    c.li.querySelector('.card-media').setAttribute('aria-label', done ? `Compare ${name}: original and result` : `Details of ${name}`);
    c.li.querySelector('.card-delete').setAttribute('aria-label', `Delete ${name}`);
    for (const a of c.li.querySelectorAll('a[download]')) {
      const which = a.dataset.testid === 'download-result' ? 'result' : 'original';
      const m = which === 'result' ? c.job.result : c.job.original;
      a.replaceWith(downloadLink(id, which, name, m, which === 'result' ? 'Result' : 'Original', a.className));
    }
  },

  card(job) {
    const id = job.id;
    const name = displayName(id);
    const done = job.state === 'done';
    const o = job.original;
    const r = job.result;
    const li = h('li', {
      class: `card card-${job.state}`,
      'data-job-id': id,
      'data-state': job.state,
      'data-testid': 'gallery-item',
    });
    if (r) {
      li.dataset.resultWidth = String(r.width);
      li.dataset.resultHeight = String(r.height);
    }
    this.cards.set(id, { li, job });

    // The picture opens the comparison (or, for a failure, the details).
    const media = h(
      'button',
      {
        type: 'button',
        class: 'card-media',
        'data-action': 'compare',
        'aria-label': done ? `Compare ${name}: original and result` : `Details of ${name}`,
      },
      h('span', { class: 'card-hint', 'aria-hidden': 'true', text: done ? 'Compare' : 'Details' }),
    );
    // A failure shows its original, when the archive kept one.
    const img = h('img', { alt: '', loading: 'lazy', decoding: 'async' });
    loadImage(img, id, done ? 'result' : 'original', () =>
      img.replaceWith(h('span', { class: 'card-placeholder', text: done ? 'No preview' : 'No image' })),
    );
    media.prepend(img);

    const facts = h('dl', { class: 'facts' });
    const fact = (k, v) => facts.append(h('div', {}, h('dt', { text: k }), h('dd', { text: v })));
    if (done) {
      fact('Pixels', `${fmtDims(o)} → ${fmtDims(r)}`);
      fact('Bytes', `${fmtBytes(o && o.size)} → ${fmtBytes(r && r.size)}`);
      fact('Format', `${fmtFormat(o)} → ${fmtFormat(r)}`);
    } else if (o) {
      fact('Original', `${fmtDims(o)} · ${fmtFormat(o)} · ${fmtBytes(o.size)}`);
    }

    const body = h(
      'div',
      { class: 'card-body' },
      h(
        'div',
        { class: 'card-title' },
        done ? null : h('span', { class: 'badge badge-failed', text: 'failed' }),
        h('span', { class: 'card-name', title: name, text: name }),
      ),
      h('code', { class: 'card-spec', title: job.spec, text: job.spec || '—' }),
      facts,
    );
    if (!done) {
      const err = job.error || { code: 'failed', message: 'The job failed without a reason.' };
      body.append(
        h('p', { class: 'card-error', 'data-testid': 'gallery-error' }, h('strong', { text: `${errorLabel(err.code)} ` }), h('code', { text: err.code }), h('br'), err.message),
      );
    }
    body.append(
      h(
        'div',
        { class: 'card-actions' },
        downloadLink(id, 'original', name, o, 'Original', 'btn btn-small btn-quiet'),
        done ? downloadLink(id, 'result', name, r, 'Result', 'btn btn-small btn-quiet') : null,
        h(
          'button',
          { type: 'button', class: 'btn btn-icon btn-quiet btn-danger card-delete', 'data-action': 'delete', 'aria-label': `Delete ${name}`, title: 'Delete' },
          icon('trash'),
        ),
      ),
    );
    li.append(media, body);
    return li;
  },

  onClick(ev) {
    const btn = ev.target.closest('[data-action]');
    const li = btn && btn.closest('li[data-job-id]');
    if (!li) return;
    const entry = this.cards.get(li.dataset.jobId);
    if (!entry) return;
    if (btn.dataset.action === 'compare') Compare.open(entry.job, btn);
    else if (btn.dataset.action === 'delete') this.remove(entry, btn);
  },

  async remove(entry, btn) {
    const name = displayName(entry.job.id);
    // The archive keeps one copy: ask first.
    if (!window.confirm(`Delete “${name}”? Its original and result are removed from the server.`)) return;
    btn.disabled = true;
    try {
      await requestJson(urls.status(entry.job.id), { method: 'DELETE' });
    } catch (err) {
      if (err.status !== 404) {
        btn.disabled = false;
        Announcer.say(`Could not delete ${name}: ${err.message}`);
        window.alert(`Could not delete “${name}”: ${err.message}`);
        return;
      }
    }
    const next = entry.li.nextElementSibling || entry.li.previousElementSibling;
    entry.li.remove();
    for (const img of entry.li.querySelectorAll('img')) unloadImage(img);
    this.cards.delete(entry.job.id);
    Names.forget(entry.job.id);
    this.updateStatus();
    Announcer.say(`Deleted ${name}`);
    const focus = next && next.querySelector('.card-media');
    (focus || $('#gallery-title')).focus();
  },
};

/** A download link to the link the server gave (a stale one is renewed
 * when clicked: Links.onClick). */
function downloadLink(id, which, name, m, text, className) {
  const ext = m && m.format ? (m.format === 'jpeg' ? 'jpg' : m.format) : '';
  return h(
    'a',
    {
      class: className,
      href: Links.now(id, which) || urls[which](id),
      'data-link-id': id,
      'data-link': which,
      download: `${baseName(name)}${which === 'result' ? '-result' : ''}${ext ? `.${ext}` : ''}`,
      'aria-label': `Download the ${which} of ${name}`,
      'data-testid': `download-${which}`,
    },
    icon('download'),
    text,
  );
}

const imageRetries = new WeakMap(); // img -> {attempt, tries, onGiveUp, timer}

/**
 * Load the `which` image ('result' or 'original') of job `id` into `img`,
 * from the link the server gave. While it fails (an original the archive
 * has not stored yet answers 404; a signed link that expired, 403) try
 * again a few times, backing off, with fresh links when they are signed.
 */
function loadImage(img, id, which, onGiveUp = null, tries = 4) {
  unloadImage(img);
  const state = { attempt: 0, tries, onGiveUp, timer: 0 };
  imageRetries.set(img, state);
  const current = () => imageRetries.get(img) === state;
  const show = (src, attempt) => {
    if (current()) img.src = attempt ? withQuery(src, `try=${attempt}`) : src;
  };
  img.addEventListener('error', function retry() {
    if (!current()) {
      img.removeEventListener('error', retry);
      return;
    }
    state.attempt += 1;
    if (state.attempt > state.tries) {
      img.removeEventListener('error', retry);
      imageRetries.delete(img);
      if (state.onGiveUp) state.onGiveUp();
      return;
    }
    const attempt = state.attempt;
    state.timer = setTimeout(() => {
      if (current()) Links.get(id, which, { force: true, wanted: current }).then((src) => show(src, attempt));
    }, 1000 * 2 ** (attempt - 1));
  });
  const known = Links.now(id, which);
  if (known) show(known, 0);
  else Links.get(id, which, { wanted: current }).then((src) => show(src, 0));
}

function unloadImage(img) {
  const state = imageRetries.get(img);
  if (state) clearTimeout(state.timer);
  imageRetries.delete(img);
  img.removeAttribute('src');
}

// ---------------------------------------------------------------------------
// Comparison dialog: a keyboard-operable slider, or side by side
// ---------------------------------------------------------------------------

const Compare = {
  opener: null,
  job: null,

  init() {
    this.dialog = $('#compare');
    this.range = $('#stage-range');
    this.range.addEventListener('input', () => this.setSplit());
    $('#compare-close').addEventListener('click', () => this.dialog.close());
    this.dialog.addEventListener('click', (ev) => {
      if (ev.target === this.dialog) this.dialog.close(); // the backdrop
    });
    this.dialog.addEventListener('close', () => {
      for (const img of this.dialog.querySelectorAll('img')) unloadImage(img);
      if (this.opener && this.opener.isConnected) this.opener.focus();
    });
    this.dialog.addEventListener('change', (ev) => {
      if (ev.target.name === 'compare-mode') this.setMode(ev.target.value);
    });
  },

  open(job, opener) {
    this.job = job;
    this.opener = opener || document.activeElement;
    const id = job.id;
    const name = displayName(id);
    const o = job.original;
    const r = job.result;
    $('#compare-title').textContent = name;
    this.dialog.dataset.jobId = id;

    // The stage takes the original's shape; both images are contained in it.
    const ref = o && o.width ? o : r;
    const stage = $('#stage');
    if (ref && ref.width && ref.height) {
      stage.style.aspectRatio = `${ref.width} / ${ref.height}`;
      stage.style.width = `min(100%, calc(62vh * ${(ref.width / ref.height).toFixed(4)}))`;
    }
    const note = $('#compare-note');
    note.hidden = true;
    const missing = () => {
      note.hidden = false;
      note.textContent =
        job.state === 'done'
          ? 'The original is not in the archive (yet); it appears here once it is stored.'
          : 'No image to show: the archive has no original for this job.';
    };
    loadImage($('#stage-original'), id, 'original', missing);
    $('#stage-original').alt = `Original of ${name}`;
    loadImage($('#side-original'), id, 'original');
    $('#side-original').alt = `Original of ${name}`;
    $('#side-original-cap').textContent = o ? `Original · ${fmtFormat(o)} · ${fmtDims(o)} · ${fmtBytes(o.size)}` : 'Original';
    const res = job.state === 'done';
    for (const el of [$('#stage-result'), $('#side-result')]) {
      el.alt = `Result of ${name}`;
      if (res) loadImage(el, id, 'result');
      else unloadImage(el);
    }
    $('#side-result-cap').textContent = res ? `Result · ${fmtFormat(r)} · ${fmtDims(r)} · ${fmtBytes(r && r.size)}` : '';
    $('#side-result').closest('figure').hidden = !res;
    $('#compare .segmented').hidden = !res; // a failure has one picture

    // Different shapes do not line up under a slider: start side by side.
    const sameShape = o && r && o.width && r.width && Math.abs(o.width / o.height - r.width / r.height) < 0.02;
    const mode = res && (sameShape || !o) ? 'slider' : 'side';
    $(`#compare input[name=compare-mode][value=${mode}]`).checked = true;
    this.setMode(mode);
    this.range.value = '50';
    this.setSplit();
    this.meta(job, name);
    if (!this.dialog.open) this.dialog.showModal();
    (mode === 'slider' ? this.range : $('#compare-close')).focus();
  },

  setMode(mode) {
    $('#stage').hidden = mode !== 'slider';
    $('#side').hidden = mode !== 'side';
    this.dialog.dataset.mode = mode;
  },

  setSplit() {
    const v = Number(this.range.value);
    $('#stage-original').style.clipPath = `inset(0 ${100 - v}% 0 0)`;
    $('#stage-handle').style.left = `${v}%`;
    this.range.setAttribute('aria-valuetext', `${v}% original, ${100 - v}% result`);
  },

  meta(job, name) {
    const dl = $('#compare-meta');
    dl.replaceChildren();
    const row = (k, v) => {
      if (v) dl.append(h('div', {}, h('dt', { text: k }), h('dd', { text: v })));
    };
    const o = job.original;
    const r = job.result;
    row('Spec', job.spec);
    row('Original', o ? `${fmtFormat(o)} · ${fmtDims(o)} · ${fmtBytes(o.size)}` : '');
    if (r) {
      const change = o && o.size && r.size ? ` (${r.size <= o.size ? '−' : '+'}${Math.abs(Math.round((100 * (r.size - o.size)) / o.size))} %)` : '';
      row('Result', `${fmtFormat(r)} · ${fmtDims(r)} · ${fmtBytes(r.size)}${change}`);
    }
    if (job.error) row('Failure', `${errorLabel(job.error.code)} (${job.error.code}): ${job.error.message}`);
    if (job.timings && job.state === 'done') {
      const t = job.timings;
      row('Timings', `decode ${fmtMs(t.decode)} · transform ${fmtMs(t.transform)} · encode ${fmtMs(t.encode)}`);
    }
    row('Worker', job.worker);
    if (job.submittedAt) {
      const took = job.finishedAt ? ` (finished after ${fmtMs(job.finishedAt - job.submittedAt)})` : '';
      row('Submitted', `${fmtTime(job.submittedAt)}${took}`);
    }
    if (job.id) dl.append(h('div', {}, h('dt', { text: 'Job id' }), h('dd', {}, h('code', { text: job.id }))));
    const actions = $('#compare-actions');
    actions.replaceChildren(downloadLink(job.id, 'original', name, o, 'Original', 'btn'));
    if (job.state === 'done') actions.append(downloadLink(job.id, 'result', name, r, 'Result', 'btn'));
  },
};

// ---------------------------------------------------------------------------
// Operations: throughput chart, in-flight from /v1/stats
// ---------------------------------------------------------------------------

const Ops = {
  buckets: new Map(), // bucket index -> {done, failed}
  counted: new Set(),
  done: 0,
  failed: 0,
  durations: [], // total processing ms of recent jobs
  visible: false,
  statsTimer: 0,
  statsGone: false,
  colors: null, // from the stylesheet, for the canvas

  init() {
    this.canvas = $('#throughput');
    this.scheduleDraw = frameThrottle(() => this.draw(), 500);
    this.size = { w: 0, h: 0 };
    new ResizeObserver((entries) => {
      const r = entries[entries.length - 1].contentRect;
      this.size = { w: r.width, h: r.height };
      this.draw();
    }).observe(this.canvas);
    new IntersectionObserver((entries) => {
      this.visible = entries.some((x) => x.isIntersecting);
      this.schedulePoll(0);
    }).observe($('#ops'));
    document.addEventListener('visibilitychange', () => this.schedulePoll(0));
    matchMedia('(prefers-color-scheme: dark)').addEventListener('change', () => {
      this.colors = null;
      this.draw();
    });
    setInterval(() => {
      if (this.visible && document.visibilityState === 'visible') this.draw();
    }, 2000);
  },

  record(job, via) {
    if (this.counted.has(job.id)) return;
    this.counted.add(job.id);
    // An event counts when it arrives; a checked job when it finished.
    const at = via === 'event' ? now() : job.finishedAt || now();
    const k = Math.floor(at / CONFIG.bucketMs);
    const b = this.buckets.get(k) || { done: 0, failed: 0 };
    b[job.state === 'done' ? 'done' : 'failed'] += 1;
    this.buckets.set(k, b);
    if (job.state === 'done') this.done += 1;
    else this.failed += 1;
    const t = job.timings;
    if (t && t.decode != null && t.transform != null && t.encode != null) {
      this.durations.push(t.decode + t.transform + t.encode);
      if (this.durations.length > 200) this.durations.shift();
    }
    const oldest = Math.floor(now() / CONFIG.bucketMs) - CONFIG.buckets;
    for (const key of this.buckets.keys()) if (key < oldest) this.buckets.delete(key);
    $('#seen-done').textContent = fmtInt(this.done);
    $('#seen-failed').textContent = fmtInt(this.failed);
    if (this.durations.length) {
      const sorted = [...this.durations].sort((a, b) => a - b);
      $('#median-ms').textContent = fmtMs(sorted[Math.floor(sorted.length / 2)]);
    }
    this.scheduleDraw();
  },

  schedulePoll(delay) {
    clearTimeout(this.statsTimer);
    this.statsTimer = 0;
    if (this.statsGone || !this.visible || document.visibilityState !== 'visible') return;
    this.statsTimer = setTimeout(() => this.poll(), delay);
  },

  async poll() {
    const out = $('#inflight');
    const meter = $('#inflight-meter');
    try {
      const s = await requestJson('/v1/stats');
      const n = num(s && s.in_flight);
      const max = num(s && s.max_in_flight);
      if (n === null) throw new ApiError(200, 'bad_response', 'unexpected answer');
      out.textContent = max ? `${fmtInt(n)} of ${fmtInt(max)}` : fmtInt(n);
      meter.hidden = !max;
      if (max) {
        meter.max = max;
        meter.value = n;
        meter.high = max * 0.8;
        meter.optimum = 0;
      }
      out.dataset.state = 'ok';
    } catch (err) {
      meter.hidden = true;
      if (err.status === 404) {
        out.textContent = 'not available';
        out.dataset.state = 'unavailable';
        this.statsGone = true; // this server has no /v1/stats
        return;
      }
      if (err.status === 401 || err.status === 403) {
        // Asked again when a key is entered (Auth.changed).
        out.textContent = err.status === 401 ? 'needs an API key' : `not allowed (${err.code})`;
        out.dataset.state = 'error';
        return;
      }
      out.textContent = err.status ? `unavailable (HTTP ${err.status})` : 'unreachable';
      out.dataset.state = 'error';
    }
    this.schedulePoll(CONFIG.statsEveryMs);
  },

  draw() {
    const canvas = this.canvas;
    const { w: cssW, h: cssH } = this.size;
    if (!cssW || !cssH) return;
    const dpr = window.devicePixelRatio || 1;
    if (canvas.width !== Math.round(cssW * dpr) || canvas.height !== Math.round(cssH * dpr)) {
      canvas.width = Math.round(cssW * dpr);
      canvas.height = Math.round(cssH * dpr);
    }
    const ctx = canvas.getContext('2d');
    ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
    ctx.clearRect(0, 0, cssW, cssH);
    if (!this.colors) {
      const css = getComputedStyle(document.documentElement);
      this.colors = {};
      for (const name of ['--ok', '--err', '--muted', '--grid']) this.colors[name] = css.getPropertyValue(name).trim() || '#888';
    }
    const color = (name) => this.colors[name];

    const current = Math.floor(now() / CONFIG.bucketMs);
    const series = [];
    for (let k = current - CONFIG.buckets + 1; k <= current; k++) series.push(this.buckets.get(k) || { done: 0, failed: 0 });
    const peak = Math.max(...series.map((b) => b.done + b.failed));
    const top = 2 * gridStep(peak);

    const pad = { l: 34, r: 8, t: 8, b: 20 };
    const w = cssW - pad.l - pad.r;
    const hgt = cssH - pad.t - pad.b;
    ctx.font = '11px system-ui, sans-serif';
    ctx.textBaseline = 'middle';
    ctx.fillStyle = color('--muted');
    ctx.strokeStyle = color('--grid');
    ctx.lineWidth = 1;
    for (const f of [0, 0.5, 1]) {
      const y = Math.round(pad.t + hgt - f * hgt) + 0.5;
      ctx.beginPath();
      ctx.moveTo(pad.l, y);
      ctx.lineTo(pad.l + w, y);
      ctx.stroke();
      ctx.textAlign = 'right';
      ctx.fillText(fmtInt(f * top), pad.l - 6, y);
    }
    const slot = w / series.length;
    const barW = Math.max(1, slot - Math.min(4, slot * 0.25));
    series.forEach((b, i) => {
      const x = pad.l + i * slot + (slot - barW) / 2;
      const hDone = (b.done / top) * hgt;
      const hFail = (b.failed / top) * hgt;
      ctx.fillStyle = color('--ok');
      ctx.fillRect(x, pad.t + hgt - hDone, barW, hDone);
      ctx.fillStyle = color('--err');
      ctx.fillRect(x, pad.t + hgt - hDone - hFail, barW, hFail);
    });
    ctx.fillStyle = color('--muted');
    ctx.textBaseline = 'alphabetic';
    ctx.textAlign = 'left';
    ctx.fillText('5 min ago', pad.l, cssH - 4);
    ctx.textAlign = 'center';
    ctx.fillText('2.5 min', pad.l + w / 2, cssH - 4);
    ctx.textAlign = 'right';
    ctx.fillText('now', pad.l + w, cssH - 4);

    const done = series.reduce((a, b) => a + b.done, 0);
    const failed = series.reduce((a, b) => a + b.failed, 0);
    canvas.setAttribute(
      'aria-label',
      done + failed
        ? `Last 5 minutes: ${fmtInt(done)} done, ${fmtInt(failed)} failed; busiest 10 seconds: ${fmtInt(peak)} jobs.`
        : 'No jobs finished in the last 5 minutes.',
    );
    canvas.dataset.done = String(done);
    canvas.dataset.failed = String(failed);
  },
};

/** A round whole step for two gridlines above zero that hold `peak`. */
function gridStep(peak) {
  const half = Math.max(2, peak / 2);
  const p = 10 ** Math.floor(Math.log10(half));
  for (const m of [1, 1.5, 2, 2.5, 3, 4, 5, 6, 8, 10]) {
    const step = m * p;
    if (step >= half && Number.isInteger(step)) return step;
  }
  return 10 * p;
}

// ---------------------------------------------------------------------------
// Intake: picker, folder picker, drag and drop (folders too), paste
// ---------------------------------------------------------------------------

const Intake = {
  init() {
    const zone = $('#dropzone');
    const files = $('#file-input');
    const folder = $('#folder-input');
    const open = () => files.click();
    zone.addEventListener('click', open);
    zone.addEventListener('keydown', (ev) => {
      if (ev.key === 'Enter' || ev.key === ' ') {
        ev.preventDefault();
        open();
      }
    });
    $('#pick-files').addEventListener('click', open);
    $('#pick-folder').addEventListener('click', () => folder.click());
    if (!('webkitdirectory' in folder)) $('#pick-folder').hidden = true;

    files.addEventListener('change', () => {
      Uploads.add([...files.files].map((file) => ({ file, path: file.name })));
      files.value = '';
    });
    folder.addEventListener('change', () => {
      const all = [...folder.files];
      const images = all.filter(looksLikeImage);
      this.note(all.length - images.length);
      Uploads.add(images.map((file) => ({ file, path: file.webkitRelativePath || file.name })));
      folder.value = '';
    });

    // The whole page accepts drops; the zone shows where.
    let depth = 0;
    const hasFiles = (ev) => ev.dataTransfer && [...ev.dataTransfer.types].includes('Files');
    window.addEventListener('dragenter', (ev) => {
      if (!hasFiles(ev)) return;
      depth += 1;
      zone.classList.add('dragging');
    });
    window.addEventListener('dragleave', (ev) => {
      if (!hasFiles(ev)) return;
      depth = Math.max(0, depth - 1);
      if (!depth) zone.classList.remove('dragging');
    });
    window.addEventListener('dragover', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      ev.dataTransfer.dropEffect = 'copy';
    });
    window.addEventListener('drop', (ev) => {
      if (!hasFiles(ev)) return;
      ev.preventDefault();
      depth = 0;
      zone.classList.remove('dragging');
      this.fromDrop(ev.dataTransfer);
    });
    document.addEventListener('paste', (ev) => {
      if (isEditable(ev.target) || !ev.clipboardData) return;
      const pasted = [...ev.clipboardData.files].filter(looksLikeImage);
      if (!pasted.length) return;
      ev.preventDefault();
      Uploads.add(pasted.map((file, i) => ({ file, path: file.name || `pasted-${i + 1}.png` })));
    });
  },

  note(skipped, scanning) {
    const el = $('#scan-note');
    if (scanning) {
      el.hidden = false;
      el.textContent = scanning;
    } else if (skipped) {
      el.hidden = false;
      el.textContent = `Skipped ${plural(skipped, 'file')} that ${skipped === 1 ? 'is' : 'are'} not images (or hidden).`;
    } else {
      el.hidden = true;
    }
  },

  async fromDrop(dt) {
    // Entries must be taken during the event: the list is emptied after it.
    const entries = [];
    const loose = [];
    for (const item of dt.items || []) {
      if (item.kind !== 'file') continue;
      const entry = typeof item.webkitGetAsEntry === 'function' ? item.webkitGetAsEntry() : null;
      if (entry) entries.push(entry);
      else {
        const f = item.getAsFile();
        if (f) loose.push({ file: f, path: f.name });
      }
    }
    if (!entries.length && !loose.length) {
      Uploads.add([...dt.files].map((file) => ({ file, path: file.name })));
      return;
    }
    const found = [...loose];
    const fromFolders = [];
    let skipped = 0;
    const walk = [...entries.map((entry) => ({ entry, inFolder: false }))];
    let lastNote = 0;
    while (walk.length) {
      const { entry, inFolder } = walk.shift();
      try {
        if (entry.isFile) {
          const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
          if (!inFolder) found.push({ file, path: file.name });
          else if (looksLikeImage(file)) fromFolders.push({ file, path: entry.fullPath.replace(/^\//, '') });
          else skipped += 1;
        } else if (entry.isDirectory) {
          const reader = entry.createReader();
          for (;;) {
            // readEntries answers in batches until an empty one.
            const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
            if (!batch.length) break;
            for (const child of batch) walk.push({ entry: child, inFolder: true });
          }
        }
      } catch {
        skipped += 1;
      }
      if (now() - lastNote > 250) {
        lastNote = now();
        this.note(0, `Reading folders… ${plural(found.length + fromFolders.length, 'image')} found`);
      }
    }
    fromFolders.sort((a, b) => a.path.localeCompare(b.path, undefined, { numeric: true }));
    this.note(skipped);
    Uploads.add([...found, ...fromFolders]);
  },
};

// ---------------------------------------------------------------------------
// Start
// ---------------------------------------------------------------------------

function start() {
  Announcer.el = $('#announcer');
  Names.load();
  Auth.load();
  Auth.init();
  Builder.restore();
  Builder.wire();
  View.init();
  Gallery.init();
  Compare.init();
  Ops.init();
  Intake.init();
  Builder.changed(false);
  Builder.load();
  Jobs.connect();
  Gallery.loadMore();
  document.addEventListener('click', (ev) => Links.onClick(ev));
  setInterval(() => Jobs.sweep(), 2000);
  window.addEventListener('beforeunload', (ev) => {
    if (!Uploads.sending()) return;
    ev.preventDefault();
    ev.returnValue = ''; // files not sent yet would be lost
  });
  Ops.draw();
  View.render();
}

start();
