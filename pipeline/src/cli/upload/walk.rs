//! The files `pipeline upload` sends: the files named, the images under the
//! directories named (recursively), or the paths read from standard input;
//! images recognised by their signature, not their extension.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use pipeline_core::Error;

/// One file to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Input {
    /// Where it is.
    pub file: PathBuf,
    /// Its path under its input root, `/`-separated: the key of the
    /// manifest and the path of its result under `--out`.
    pub rel: String,
    /// Its size in bytes when listed.
    pub size: u64,
}

/// A file left out, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// Where it is.
    pub file: PathBuf,
    /// Why it is not sent.
    pub why: String,
}

/// What [`collect`] found.
#[derive(Debug, Default)]
pub struct Found {
    /// The images, sorted by `rel`.
    pub inputs: Vec<Input>,
    /// The other files.
    pub skipped: Vec<Skipped>,
}

/// Bytes enough to recognise every format the server takes.
const SIGNATURE_BYTES: usize = 64;

/// List the images under `roots`: a directory is walked recursively
/// (symbolic links to directories are not followed, so a loop cannot trap
/// the walk), a file is taken as it is. `skip` leaves a path out (the
/// output directory, when it is inside an input).
pub fn collect(roots: &[PathBuf], skip: &[PathBuf]) -> Result<Found, Error> {
    let mut found = Found::default();
    let mut by_rel: BTreeMap<String, Input> = BTreeMap::new();
    for root in roots {
        let meta = std::fs::metadata(root)
            .map_err(|e| Error::Config(format!("{}: {e}", root.display())))?;
        if meta.is_dir() {
            walk(root, root, skip, &mut by_rel, &mut found.skipped)?;
        } else if !meta.is_file() {
            found.skipped.push(Skipped {
                file: root.clone(),
                why: "not a regular file".into(),
            });
        } else {
            consider(root, file_rel(root)?, &mut by_rel, &mut found.skipped)?;
        }
    }
    found.inputs = by_rel.into_values().collect();
    Ok(found)
}

fn walk(
    root: &Path,
    dir: &Path,
    skip: &[PathBuf],
    by_rel: &mut BTreeMap<String, Input>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), Error> {
    // A folder that cannot be read is reported, not the end of the run.
    let entries = std::fs::read_dir(dir).and_then(|d| d.collect::<Result<Vec<_>, _>>());
    let mut entries = match entries {
        Ok(e) => e,
        Err(e) => {
            skipped.push(Skipped {
                file: dir.to_path_buf(),
                why: format!("cannot read the folder: {e}"),
            });
            return Ok(());
        }
    };
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let path = entry.path();
        if skip.iter().any(|s| s == &path) {
            continue;
        }
        let kind = match entry.file_type() {
            Ok(k) => k,
            Err(e) => {
                skipped.push(Skipped {
                    file: path,
                    why: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        if kind.is_dir() {
            walk(root, &path, skip, by_rel, skipped)?;
            continue;
        }
        if kind.is_symlink() && path.is_dir() {
            skipped.push(Skipped {
                file: path,
                why: "a link to a directory (not followed)".into(),
            });
            continue;
        }
        // Pipes, sockets, devices: opening one could block for ever.
        if !path.is_file() {
            skipped.push(Skipped {
                file: path,
                why: "not a regular file".into(),
            });
            continue;
        }
        let rel = relative(root, &path)?;
        consider(&path, rel, by_rel, skipped)?;
    }
    Ok(())
}

/// Where a file named on its own goes under `--out`: its relative path as
/// given (`photos/a/b.jpg`, as `find` lists them), or its name alone when
/// the path is absolute or climbs out (`..`).
fn file_rel(path: &Path) -> Result<String, Error> {
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            Component::CurDir => {}
            _ => {
                parts.clear();
                break;
            }
        }
    }
    if parts.is_empty() {
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .ok_or_else(|| Error::Config(format!("{}: not a file name", path.display())))?;
        return Ok(name);
    }
    Ok(parts.join("/"))
}

/// `path` under `root`, `/`-separated.
fn relative(root: &Path, path: &Path) -> Result<String, Error> {
    let rel = path.strip_prefix(root).map_err(|_| {
        Error::Config(format!(
            "{} is not under {}",
            path.display(),
            root.display()
        ))
    })?;
    let parts: Vec<String> = rel
        .components()
        .filter_map(|c| match c {
            Component::Normal(p) => Some(p.to_string_lossy().into_owned()),
            _ => None,
        })
        .collect();
    Ok(parts.join("/"))
}

fn consider(
    path: &Path,
    rel: String,
    by_rel: &mut BTreeMap<String, Input>,
    skipped: &mut Vec<Skipped>,
) -> Result<(), Error> {
    let mut head = [0u8; SIGNATURE_BYTES];
    let (n, size) = match std::fs::File::open(path).and_then(|mut f| {
        let size = f.metadata()?.len();
        let mut n = 0;
        while n < head.len() {
            match f.read(&mut head[n..])? {
                0 => break,
                k => n += k,
            }
        }
        Ok((n, size))
    }) {
        Ok(v) => v,
        Err(e) => {
            skipped.push(Skipped {
                file: path.to_path_buf(),
                why: format!("cannot read: {e}"),
            });
            return Ok(());
        }
    };
    if image::guess_format(&head[..n]).is_err() {
        skipped.push(Skipped {
            file: path.to_path_buf(),
            why: "not an image (no known signature)".into(),
        });
        return Ok(());
    }
    if let Some(other) = by_rel.get(&rel) {
        return Err(Error::Config(format!(
            "{} and {} would both be {rel} in the output; upload them with separate --out directories",
            other.file.display(),
            path.display()
        )));
    }
    by_rel.insert(
        rel.clone(),
        Input {
            file: path.to_path_buf(),
            rel,
            size,
        },
    );
    Ok(())
}

/// Paths from `reader`, one per line (blank lines ignored).
pub fn read_list(reader: impl std::io::BufRead) -> Result<Vec<PathBuf>, Error> {
    let mut paths = Vec::new();
    for line in reader.lines() {
        let line = line.map_err(|e| Error::Config(format!("standard input: {e}")))?;
        let line = line.trim_end_matches('\r');
        if !line.trim().is_empty() {
            paths.push(PathBuf::from(line));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PNG: &[u8] = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR";

    #[test]
    fn a_tree_is_walked_by_signature_and_mirrored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("in");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/b/one.png"), PNG).unwrap();
        // Named like an image, is not: skipped. Not named like one, is: kept.
        std::fs::write(root.join("a/fake.jpg"), b"hello").unwrap();
        std::fs::write(root.join("noext"), PNG).unwrap();
        std::fs::create_dir_all(root.join("out")).unwrap();
        std::fs::write(root.join("out/x.png"), PNG).unwrap();
        #[cfg(unix)]
        std::os::unix::fs::symlink(&root, root.join("a/loop")).unwrap();
        // A named pipe: opening it would block the walk for ever.
        #[cfg(unix)]
        assert!(
            std::process::Command::new("mkfifo")
                .arg(root.join("a/pipe.png"))
                .status()
                .unwrap()
                .success()
        );

        let found = collect(std::slice::from_ref(&root), &[root.join("out")]).unwrap();
        let rels: Vec<&str> = found.inputs.iter().map(|i| i.rel.as_str()).collect();
        assert_eq!(rels, ["a/b/one.png", "noext"]);
        let why: Vec<&str> = found.skipped.iter().map(|s| s.why.as_str()).collect();
        assert!(
            why.contains(&"not an image (no known signature)"),
            "{why:?}"
        );
        #[cfg(unix)]
        assert!(
            why.contains(&"a link to a directory (not followed)"),
            "{why:?}"
        );
        #[cfg(unix)]
        assert!(why.contains(&"not a regular file"), "{why:?}");
    }

    #[test]
    fn two_inputs_with_one_output_path_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for d in ["x", "y"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
            std::fs::write(dir.path().join(d).join("same.png"), PNG).unwrap();
        }
        let roots = [dir.path().join("x"), dir.path().join("y")];
        let err = collect(&roots, &[]).unwrap_err().to_string();
        assert!(err.contains("same.png"), "{err}");
    }

    #[test]
    fn a_file_named_by_a_relative_path_keeps_it() {
        assert_eq!(
            file_rel(Path::new("photos/a/b.jpg")).unwrap(),
            "photos/a/b.jpg"
        );
        assert_eq!(file_rel(Path::new("./a/b.jpg")).unwrap(), "a/b.jpg");
        assert_eq!(file_rel(Path::new("/tmp/x/b.jpg")).unwrap(), "b.jpg");
        assert_eq!(file_rel(Path::new("../x/b.jpg")).unwrap(), "b.jpg");
    }

    #[test]
    fn a_list_skips_blank_lines() {
        let list = read_list(&b"a.jpg\n\n  \nb c.png\r\n"[..]).unwrap();
        assert_eq!(list, [PathBuf::from("a.jpg"), PathBuf::from("b c.png")]);
    }
}
