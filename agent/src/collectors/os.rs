//! `os`: the distribution from os-release(5), `<rootfs>/etc/os-release` or else
//! `<rootfs>/usr/lib/os-release`. Neither present is no data, as in node_exporter.

use std::collections::BTreeMap;

use super::render::Family;
use super::util::{join_rooted, read};
use super::{CollectError, Ctx};

/// The label names of node_os_info, in node_exporter's order, and the os-release key
/// each comes from.
const INFO_LABELS: [(&str, &str); 12] = [
    ("build_id", "BUILD_ID"),
    ("id", "ID"),
    ("id_like", "ID_LIKE"),
    ("image_id", "IMAGE_ID"),
    ("image_version", "IMAGE_VERSION"),
    ("name", "NAME"),
    ("pretty_name", "PRETTY_NAME"),
    ("variant", "VARIANT"),
    ("variant_id", "VARIANT_ID"),
    ("version", "VERSION"),
    ("version_codename", "VERSION_CODENAME"),
    ("version_id", "VERSION_ID"),
];

/// `KEY=value` lines with shell-style quoting (os-release(5)): double quotes allow
/// `\"`, `\\`, `\$` and `` \` `` escapes, single quotes none; `#` starts a comment line.
/// Malformed lines are skipped.
pub(crate) fn parse(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((key, raw)) = line.split_once('=') else {
            continue;
        };
        let mut value = String::new();
        let mut chars = raw.chars();
        let mut quote: Option<char> = None;
        while let Some(c) = chars.next() {
            match (quote, c) {
                (None, '"' | '\'') => quote = Some(c),
                (Some(q), c) if c == q => quote = None,
                (Some('"') | None, '\\') => {
                    if let Some(n) = chars.next() {
                        value.push(n);
                    }
                }
                (_, c) => value.push(c),
            }
        }
        out.insert(key.trim().to_string(), value);
    }
    out
}

/// The leading `major[.minor]` of VERSION_ID as a number (node_exporter's
/// `^[0-9]+\.?[0-9]*`), 0 when there is none.
pub(crate) fn major_minor(version_id: &str) -> f64 {
    let int_end = version_id
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(version_id.len());
    if int_end == 0 {
        return 0.0;
    }
    let mut end = int_end;
    if version_id[end..].starts_with('.') {
        end += 1;
        end += version_id[end..]
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(version_id.len() - end);
    }
    version_id[..end]
        .trim_end_matches('.')
        .parse()
        .unwrap_or(0.0)
}

pub(crate) fn render(env: &BTreeMap<String, String>) -> Vec<Family> {
    let get = |k: &str| env.get(k).cloned().unwrap_or_default();
    let info = Family::gauge(
        "node_os_info",
        "A metric with a constant '1' value labeled by build_id, id, id_like, image_id, image_version, name, pretty_name, variant, variant_id, version, version_codename, version_id.",
    )
    .with(INFO_LABELS.iter().map(|(l, k)| (*l, get(k))).collect(), 1.0);
    let mut out = vec![info];
    let version = major_minor(&get("VERSION_ID"));
    if version > 0.0 {
        out.push(
            Family::gauge(
                "node_os_version",
                "Metric containing the major.minor part of the OS version.",
            )
            .with(
                vec![
                    ("id", get("ID")),
                    ("id_like", get("ID_LIKE")),
                    ("name", get("NAME")),
                ],
                version,
            ),
        );
    }
    out
}

pub(crate) fn collect(ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    for rel in ["etc/os-release", "usr/lib/os-release"] {
        match read(&join_rooted(&ctx.rootfs, rel)) {
            Ok(text) => return Ok(render(&parse(&text))),
            Err(CollectError::Read { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                continue
            }
            Err(e) => return Err(e),
        }
    }
    Err(CollectError::NoData {
        reason: "no os-release file",
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn parses_quotes_and_versions() {
        let env = parse("# c\nNAME=\"Amazon Linux\"\nVERSION_ID='2023'\nID=amzn\nPRETTY_NAME=\"A \\\"q\\\" \\\\ b\"\nbad line\n");
        assert_eq!(env["NAME"], "Amazon Linux");
        assert_eq!(env["VERSION_ID"], "2023");
        assert_eq!(env["PRETTY_NAME"], "A \"q\" \\ b");
        assert_eq!(major_minor("22.04"), 22.04);
        assert_eq!(major_minor("12"), 12.0);
        assert_eq!(major_minor("3.18.4"), 3.18);
        assert_eq!(major_minor("7."), 7.0);
        assert_eq!(major_minor("rolling"), 0.0);
        assert_eq!(major_minor(""), 0.0);
    }

    #[test]
    fn debian_fixture() {
        let out = testutil::render(render(&parse(&testutil::read(
            "real",
            "rootfs/etc/os-release",
        ))));
        assert!(
            out.contains(
                "node_os_version{id=\"debian\",id_like=\"\",name=\"Debian GNU/Linux\"} 12\n"
            ),
            "{out}"
        );
    }

    proptest! {
        #[test]
        fn never_panics(s in "\\PC*") {
            let env = parse(&s);
            let _ = render(&env);
            let _ = major_minor(&s);
        }
    }
}
