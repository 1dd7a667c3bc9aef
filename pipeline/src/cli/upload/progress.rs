//! Progress of `pipeline upload`: bars on a terminal (files, bytes, rate,
//! time left), a line a second otherwise, nothing with `--json`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Bars, redrawn in place (standard error is a terminal).
    Bars,
    /// A line a second on standard error, and a line per note.
    Lines,
    /// Nothing (the summary goes out as JSON).
    Quiet,
}

/// Counts files and bytes, and shows them.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    bars: Option<(MultiProgress, ProgressBar, ProgressBar)>,
    files: AtomicU64,
    bytes: AtomicU64,
    /// Files and bytes done by earlier runs: counted, but not in the rates.
    carried_files: AtomicU64,
    carried_bytes: AtomicU64,
    total_files: u64,
    total_bytes: u64,
    started: Instant,
    last_line: Mutex<Instant>,
}

/// Lines mode prints at most this often.
const LINE_EVERY: Duration = Duration::from_secs(1);

impl Progress {
    /// Progress over `total_files` files of `total_bytes` bytes.
    pub fn new(mode: Mode, total_files: u64, total_bytes: u64) -> Self {
        let bars = (mode == Mode::Bars).then(|| {
            let multi = MultiProgress::new();
            let files = multi.add(ProgressBar::new(total_files));
            let bytes = multi.add(ProgressBar::new(total_bytes));
            if let Ok(style) = ProgressStyle::with_template(
                "files {pos:>7}/{len:7} [{bar:40}] {msg:>14}  ETA {eta}",
            ) {
                files.set_style(style.progress_chars("=> "));
            }
            if let Ok(style) = ProgressStyle::with_template(
                "bytes {bytes:>7}/{total_bytes:7} [{bar:40}] {bytes_per_sec:>12}",
            ) {
                bytes.set_style(style.progress_chars("=> "));
            }
            (multi, files, bytes)
        });
        Self {
            mode,
            bars,
            files: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            carried_files: AtomicU64::new(0),
            carried_bytes: AtomicU64::new(0),
            total_files,
            total_bytes,
            started: Instant::now(),
            last_line: Mutex::new(Instant::now() - LINE_EVERY),
        }
    }

    /// A file is finished (done, failed or already done).
    pub fn file_done(&self) {
        let n = self.files.fetch_add(1, Ordering::Relaxed) + 1;
        if let Some((_, files, _)) = &self.bars {
            files.inc(1);
            files.set_message(format!("{:.1} files/s", self.rate().0));
        }
        if self.mode == Mode::Lines {
            self.line(n == self.total_files);
        }
    }

    /// A file an earlier run finished, with its `size`.
    pub fn carried(&self, size: u64) {
        self.carried_files.fetch_add(1, Ordering::Relaxed);
        self.carried_bytes.fetch_add(size, Ordering::Relaxed);
        self.bytes(size);
    }

    /// `n` bytes of a file were sent.
    pub fn bytes(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
        if let Some((_, _, bytes)) = &self.bars {
            bytes.inc(n);
        }
    }

    /// A line about one file (skipped, failed).
    pub fn note(&self, text: &str) {
        match (&self.bars, self.mode) {
            (Some((multi, _, _)), _) => {
                let _ = multi.println(text);
            }
            (None, Mode::Lines) => eprintln!("{text}"),
            _ => {}
        }
    }

    /// The server is busy: this file waits.
    pub fn note_wait(&self, rel: &str, status: u16, wait: Duration) {
        if self.mode == Mode::Lines {
            eprintln!(
                "{rel}: server answered {status}; retrying in {} s",
                wait.as_secs()
            );
        }
    }

    /// Take the bars off the terminal.
    pub fn finish(&self) {
        if let Some((_, files, bytes)) = &self.bars {
            files.abandon();
            bytes.abandon();
        }
    }

    /// Files and bytes per second of this run (earlier runs' left out).
    fn rate(&self) -> (f64, f64) {
        let secs = self.started.elapsed().as_secs_f64().max(1e-3);
        let files = self.files.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let new_files = files.saturating_sub(self.carried_files.load(Ordering::Relaxed));
        let new_bytes = bytes.saturating_sub(self.carried_bytes.load(Ordering::Relaxed));
        (new_files as f64 / secs, new_bytes as f64 / secs)
    }

    fn line(&self, last: bool) {
        let Ok(mut at) = self.last_line.lock() else {
            return;
        };
        if !last && at.elapsed() < LINE_EVERY {
            return;
        }
        *at = Instant::now();
        let files = self.files.load(Ordering::Relaxed);
        let bytes = self.bytes.load(Ordering::Relaxed);
        let (rate, byte_rate) = self.rate();
        let eta = if rate > 0.0 {
            format!(
                "{:.0} s",
                (self.total_files - files.min(self.total_files)) as f64 / rate
            )
        } else {
            "?".into()
        };
        eprintln!(
            "progress: {files}/{} files, {:.1}/{:.1} MB, {rate:.1} files/s, {:.1} MB/s, ETA {eta}",
            self.total_files,
            bytes as f64 / 1e6,
            self.total_bytes as f64 / 1e6,
            byte_rate / 1e6,
        );
    }
}
