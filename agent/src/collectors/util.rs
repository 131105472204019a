//! Small helpers shared by the collectors: file reading with path-carrying errors and
//! number parsing with the same rules as the Go code node_exporter uses.

use std::path::{Path, PathBuf};

use super::{CollectError, ParseError};

/// Reads a whole file as text (invalid UTF-8 is replaced, never an error: label values
/// taken from it must be valid UTF-8 in the exposition format anyway).
pub(crate) fn read(path: &Path) -> Result<String, CollectError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        }),
        Err(source) => Err(CollectError::Read {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// Reads a file whose absence means the machine lacks the feature (no md driver, no NFS
/// client): node_exporter's `ErrNoData`, reported as [`CollectError::NoData`].
pub(crate) fn read_source(path: &Path, reason: &'static str) -> Result<String, CollectError> {
    match read(path) {
        Err(CollectError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Err(CollectError::NoData { reason })
        }
        other => other,
    }
}

/// Reads `path` and runs `parse` over it, attaching the path to a parse error.
pub(crate) fn read_parse<T>(
    path: &Path,
    parse: impl FnOnce(&str) -> Result<T, ParseError>,
) -> Result<T, CollectError> {
    let text = read(path)?;
    parse(&text).map_err(|source| CollectError::Parse {
        path: path.to_path_buf(),
        source,
    })
}

/// A file holding one unsigned integer, as node_exporter's `readUintFromFile` reads it
/// (surrounding white space allowed).
pub(crate) fn read_u64(path: &Path) -> Result<u64, CollectError> {
    read_parse(path, |t| parse_u64(t.trim(), 1, "value"))
}

/// A file holding one signed integer (a temperature, a throttle state).
pub(crate) fn read_i64(path: &Path) -> Result<i64, CollectError> {
    read_parse(path, |t| {
        t.trim()
            .parse()
            .map_err(|_| ParseError::new(1, format!("{:?} is not an integer", t.trim())))
    })
}

/// Reads a one-value sysfs attribute, trimmed. `None` when it cannot be read: many
/// attributes answer EINVAL or EOPNOTSUPP when they do not apply (the carrier of a
/// device that is down, the speed of a virtual device), and node_exporter then leaves
/// the metric out.
pub(crate) fn read_attr(path: &Path) -> Option<String> {
    use std::io::Read;
    // One open and one read: a sysfs attribute is produced whole, at most a page, by one
    // read (fs/sysfs/file.c), and netclass reads some twenty per interface per scrape, so
    // the size probe and second read that fs::read does would be most of the cost.
    let mut f = std::fs::File::open(path).ok()?;
    let mut buf = [0u8; 4096];
    let n = f.read(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_string())
}

/// `base` joined with a relative path given with or without a leading `/`.
pub(crate) fn join_rooted(base: &Path, rel: &str) -> PathBuf {
    let rel = rel.trim_start_matches('/');
    if rel.is_empty() {
        base.to_path_buf()
    } else {
        base.join(rel)
    }
}

pub(crate) fn parse_u64(token: &str, line: usize, what: &str) -> Result<u64, ParseError> {
    token.parse::<u64>().map_err(|_| {
        ParseError::new(
            line,
            format!("{what}: {token:?} is not an unsigned integer"),
        )
    })
}

/// Like Go's `strconv.ParseUint(s, 10, 64)`, which procfs uses for most counters: ASCII
/// digits only (no sign, no white space, no `_`), at most `u64::MAX`.
pub(crate) fn parse_go_u64(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// Like Go's `strconv.ParseUint(s, 0, 64)` (procfs' `ValueParser.PUInt64`): no sign,
/// `0x`/`0o`/`0b` prefixes or a leading `0` for octal, `_` between digits after a prefix.
pub(crate) fn parse_go_uint(s: &str) -> Option<u64> {
    if s.starts_with(['+', '-']) {
        return None;
    }
    go_magnitude(s)
}

/// Like Go's `strconv.ParseUint(s, 10, 32)` (procfs' `ParseUint32s`).
pub(crate) fn parse_go_u32(s: &str) -> Option<u32> {
    parse_go_u64(s).and_then(|v| u32::try_from(v).ok())
}

/// Like Go's `strconv.ParseFloat(s, 64)` for the inputs /proc holds.
pub(crate) fn parse_f64(token: &str, line: usize, what: &str) -> Result<f64, ParseError> {
    token
        .parse::<f64>()
        .map_err(|_| ParseError::new(line, format!("{what}: {token:?} is not a number")))
}

/// Like Go's `strconv.ParseInt(s, 0, 64)`, which procfs uses for sysfs attributes: an
/// optional sign, then `0x`/`0o`/`0b` prefixes or a leading `0` for octal, and `_`
/// between digits when a prefix is present.
pub(crate) fn parse_go_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let magnitude = go_magnitude(body)?;
    if neg {
        if magnitude <= i64::MAX as u64 + 1 {
            Some((magnitude as i64).wrapping_neg())
        } else {
            None
        }
    } else {
        i64::try_from(magnitude).ok()
    }
}

/// The unsigned part of Go's base-0 integer syntax.
fn go_magnitude(body: &str) -> Option<u64> {
    if body.is_empty() {
        return None;
    }
    let lower = body.to_ascii_lowercase();
    let (radix, digits, prefixed) = if let Some(d) = lower.strip_prefix("0x") {
        (16, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0b") {
        (2, d.to_string(), true)
    } else if let Some(d) = lower.strip_prefix("0o") {
        (8, d.to_string(), true)
    } else if lower.len() > 1 && lower.starts_with('0') {
        (8, lower[1..].to_string(), true)
    } else {
        (10, lower, false)
    };
    let digits = if prefixed {
        // Underscores only between digits (or right after the prefix).
        if digits.ends_with('_') || digits.contains("__") {
            return None;
        }
        digits.replace('_', "")
    } else {
        digits
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(&digits, radix).ok()
}

/// Parses a kernel CPU list such as `0-3,8,10-11` (see Documentation/admin-guide/cputopology.rst).
pub(crate) fn parse_cpu_list(text: &str) -> Result<Vec<u32>, ParseError> {
    let text = text.trim();
    let mut cpus = Vec::new();
    if text.is_empty() {
        return Ok(cpus);
    }
    for part in text.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a, b),
            None => (part, part),
        };
        let lo: u32 = lo
            .parse()
            .map_err(|_| ParseError::new(1, format!("bad cpu list entry {part:?}")))?;
        let hi: u32 = hi
            .parse()
            .map_err(|_| ParseError::new(1, format!("bad cpu list entry {part:?}")))?;
        if hi < lo || hi - lo > 65_536 {
            return Err(ParseError::new(1, format!("bad cpu range {part:?}")));
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

/// Undoes the octal escapes (`\040` for a space, `\011`, `\012`, `\134`) the kernel puts
/// in mount points and sources in /proc/*/mountinfo (fs/proc_namespace.c, `mangle`).
pub(crate) fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = u32::from(b[i + 1] - b'0') * 64
                + u32::from(b[i + 2] - b'0') * 8
                + u32::from(b[i + 3] - b'0');
            if v <= 0xff {
                out.push(v as u8);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A directory tree of small text files (a part of sysfs), as the sysfs collectors read
/// it: their parse functions take a `Tree`, so tests and the fuzzer can hand them a
/// [`MapTree`] instead of files.
pub(crate) trait Tree {
    /// The text of the file at `rel` (`a/b/c`), at most [`TREE_FILE_MAX`] bytes; an
    /// error of kind `NotFound` when there is none.
    fn read(&self, rel: &str) -> std::io::Result<String>;
    /// The names in directory `rel` (`""` for the top), each with its kind (not
    /// following symbolic links, as Go's `os.ReadDir`), sorted by name.
    fn list(&self, rel: &str) -> std::io::Result<Vec<(String, Kind)>>;
}

/// What a directory entry is, as Go's `fs.DirEntry.Type()` tells (a symbolic link is
/// neither a directory nor a regular file).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Kind {
    Dir,
    File,
    Other,
}

/// procfs' `SysReadFile`: one read of at most 128 bytes, white space trimmed.
pub(crate) fn sys_read_file(tree: &impl Tree, rel: &str) -> std::io::Result<String> {
    const SYS_READ_MAX: usize = 128;
    let text = tree.read(rel)?;
    let bytes = &text.as_bytes()[..text.len().min(SYS_READ_MAX)];
    Ok(String::from_utf8_lossy(bytes).trim().to_string())
}

/// Whether a sysfs read error is one procfs skips an attribute for (the attribute does
/// not apply to this device): missing, EOPNOTSUPP or EINVAL, and EACCES where
/// `permission` is set.
pub(crate) fn skippable(e: &std::io::Error, permission: bool) -> bool {
    e.kind() == std::io::ErrorKind::NotFound
        || (permission && e.kind() == std::io::ErrorKind::PermissionDenied)
        || matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)
        )
}

/// Sysfs attributes are at most a page; more is not an attribute.
pub(crate) const TREE_FILE_MAX: u64 = 64 * 1024;

/// A [`Tree`] on disk.
pub(crate) struct DirTree(pub PathBuf);

impl Tree for DirTree {
    fn read(&self, rel: &str) -> std::io::Result<String> {
        use std::io::Read;
        let mut bytes = Vec::new();
        std::fs::File::open(join_rooted(&self.0, rel))?
            .take(TREE_FILE_MAX)
            .read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    fn list(&self, rel: &str) -> std::io::Result<Vec<(String, Kind)>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(join_rooted(&self.0, rel))? {
            let e = e?;
            let kind = match e.file_type() {
                Ok(t) if t.is_dir() => Kind::Dir,
                Ok(t) if t.is_file() => Kind::File,
                _ => Kind::Other,
            };
            out.push((e.file_name().to_string_lossy().into_owned(), kind));
        }
        out.sort();
        Ok(out)
    }
}

/// A [`Tree`] in memory: relative file path to content; directories are implied by the
/// paths (so an empty directory cannot be written).
#[derive(Clone, Debug, Default)]
pub(crate) struct MapTree(pub std::collections::BTreeMap<String, String>);

impl MapTree {
    /// `path=value` lines (the fuzzer's and the tests' shorthand).
    pub(crate) fn from_lines(text: &str) -> Self {
        Self(
            text.lines()
                .filter_map(|l| l.split_once('='))
                .map(|(k, v)| (k.trim_matches('/').to_string(), v.to_string()))
                .collect(),
        )
    }
}

impl Tree for MapTree {
    fn read(&self, rel: &str) -> std::io::Result<String> {
        let rel = rel.trim_matches('/');
        if let Some(v) = self.0.get(rel) {
            return Ok(v.clone());
        }
        let prefix = format!("{rel}/");
        if self.0.keys().any(|k| k.starts_with(&prefix)) {
            return Err(std::io::Error::other("is a directory"));
        }
        Err(std::io::ErrorKind::NotFound.into())
    }

    fn list(&self, rel: &str) -> std::io::Result<Vec<(String, Kind)>> {
        let rel = rel.trim_matches('/');
        let prefix = if rel.is_empty() {
            String::new()
        } else {
            format!("{rel}/")
        };
        let mut out: Vec<(String, Kind)> = Vec::new();
        for k in self.0.keys() {
            let Some(rest) = k.strip_prefix(&prefix) else {
                continue;
            };
            let (name, kind) = match rest.split_once('/') {
                Some((n, _)) => (n, Kind::Dir),
                None => (rest, Kind::File),
            };
            if name.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(n, _)| n == name) {
                Some(e) => e.1 = e.1.min(kind),
                None => out.push((name.to_string(), kind)),
            }
        }
        if out.is_empty() && !rel.is_empty() {
            return Err(std::io::ErrorKind::NotFound.into());
        }
        out.sort();
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_ints() {
        assert_eq!(parse_go_int("0x1003"), Some(4099));
        assert_eq!(parse_go_int("0x0"), Some(0));
        assert_eq!(parse_go_int("1500"), Some(1500));
        assert_eq!(parse_go_int("-1"), Some(-1));
        assert_eq!(parse_go_int("0"), Some(0));
        assert_eq!(parse_go_int("010"), Some(8));
        assert_eq!(parse_go_int("0b101"), Some(5));
        assert_eq!(parse_go_int("0x_ff"), Some(255));
        assert_eq!(parse_go_int("1_000"), None);
        assert_eq!(parse_go_int("-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_go_int("9223372036854775808"), None);
        assert_eq!(parse_go_int(""), None);
        assert_eq!(parse_go_int("-"), None);
        assert_eq!(parse_go_int("up"), None);
        assert_eq!(parse_go_int("08"), None);
    }

    #[test]
    fn go_base0_uints() {
        assert_eq!(parse_go_uint("0x000000000000001d"), Some(29));
        assert_eq!(parse_go_uint("0xffffffffffffffff"), Some(u64::MAX));
        assert_eq!(parse_go_uint("017"), Some(15));
        assert_eq!(parse_go_uint("42"), Some(42));
        assert_eq!(parse_go_uint("+1"), None);
        assert_eq!(parse_go_uint("N/A (no PMA)"), None);
    }

    #[test]
    fn go_uints() {
        assert_eq!(parse_go_u64("18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_go_u64("18446744073709551616"), None);
        assert_eq!(parse_go_u64("+1"), None);
        assert_eq!(parse_go_u64(""), None);
        assert_eq!(parse_go_u64("1_0"), None);
        assert_eq!(parse_go_u32("4294967295"), Some(u32::MAX));
        assert_eq!(parse_go_u32("4294967296"), None);
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("\n").unwrap(), Vec::<u32>::new());
        assert_eq!(parse_cpu_list("1-3,7\n").unwrap(), vec![1, 2, 3, 7]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("x").is_err());
    }

    #[test]
    fn octal() {
        assert_eq!(unescape_octal(r"/mnt/my\040disk"), "/mnt/my disk");
        assert_eq!(unescape_octal(r"/a\011b\134c"), "/a\tb\\c");
        assert_eq!(unescape_octal(r"/trailing\04"), r"/trailing\04");
        assert_eq!(unescape_octal(r"\"), r"\");
    }
}

/// Why a sysfs class directory (`/sys/class/<name>`) could not be read: the file, relative
/// to the class directory, and the error. `no_data` where node_exporter reports no data
/// instead of an error (a file missing where its collector treats that as absence).
#[derive(Debug)]
pub(crate) struct ClassReadError {
    pub rel: String,
    pub source: std::io::Error,
    pub no_data: bool,
}

impl ClassReadError {
    /// `missing_is_no_data`: a missing file here means no data, as node_exporter has it.
    pub(crate) fn new(rel: &str, source: std::io::Error, missing_is_no_data: bool) -> Self {
        ClassReadError {
            no_data: missing_is_no_data && source.kind() == std::io::ErrorKind::NotFound,
            rel: rel.to_string(),
            source,
        }
    }

    /// A file whose text is not what the collector expects.
    pub(crate) fn invalid(rel: &str, what: String) -> Self {
        Self::new(
            rel,
            std::io::Error::new(std::io::ErrorKind::InvalidData, what),
            false,
        )
    }

    /// The collector's error for it: no data (with `reason`), or the file that failed.
    pub(crate) fn into_collect_error(self, base: &Path, reason: &'static str) -> CollectError {
        if self.no_data {
            CollectError::NoData { reason }
        } else {
            CollectError::Read {
                path: base.join(self.rel),
                source: self.source,
            }
        }
    }
}
