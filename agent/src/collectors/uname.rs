//! `uname`: node_uname_info from uname(2).

use super::render::Family;
use super::{CollectError, Ctx};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Uname {
    pub sysname: String,
    pub nodename: String,
    pub release: String,
    pub version: String,
    pub machine: String,
    pub domainname: String,
}

/// A `utsname` field: NUL-terminated, or the whole array if the kernel filled it.
pub(crate) fn parse_field(raw: &[libc::c_char]) -> String {
    let bytes: Vec<u8> = raw
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8_lossy(&bytes).into_owned()
}

pub(crate) fn render(u: &Uname) -> Vec<Family> {
    vec![Family::gauge(
        "node_uname_info",
        "Labeled system information as provided by the uname system call.",
    )
    .with(
        vec![
            ("sysname", u.sysname.clone()),
            ("release", u.release.clone()),
            ("version", u.version.clone()),
            ("machine", u.machine.clone()),
            ("nodename", u.nodename.clone()),
            ("domainname", u.domainname.clone()),
        ],
        1.0,
    )]
}

fn uname() -> std::io::Result<Uname> {
    // SAFETY: uname writes only into `buf`, a plain C struct.
    let mut buf: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(Uname {
        sysname: parse_field(&buf.sysname),
        nodename: parse_field(&buf.nodename),
        release: parse_field(&buf.release),
        version: parse_field(&buf.version),
        machine: parse_field(&buf.machine),
        domainname: parse_field(&buf.domainname),
    })
}

pub(crate) fn collect(_ctx: &Ctx) -> Result<Vec<Family>, CollectError> {
    let u = uname().map_err(|source| CollectError::Read {
        path: "uname(2)".into(),
        source,
    })?;
    Ok(render(&u))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::collectors::testutil;
    use proptest::prelude::*;

    #[test]
    fn renders() {
        let u = Uname {
            sysname: "Linux".into(),
            nodename: "vm".into(),
            release: "6.18.44-fc-v669".into(),
            version: "#1 SMP PREEMPT_DYNAMIC @0".into(),
            machine: "x86_64".into(),
            domainname: "(none)".into(),
        };
        assert_eq!(
            testutil::render(render(&u)),
            "# HELP node_uname_info Labeled system information as provided by the uname system call.\n\
             # TYPE node_uname_info gauge\n\
             node_uname_info{domainname=\"(none)\",machine=\"x86_64\",nodename=\"vm\",release=\"6.18.44-fc-v669\",sysname=\"Linux\",version=\"#1 SMP PREEMPT_DYNAMIC @0\"} 1\n"
        );
    }

    #[test]
    fn fields() {
        let raw: Vec<libc::c_char> = b"Linux\0junk".iter().map(|&b| b as libc::c_char).collect();
        assert_eq!(parse_field(&raw), "Linux");
        let full: Vec<libc::c_char> = b"abc".iter().map(|&b| b as libc::c_char).collect();
        assert_eq!(parse_field(&full), "abc");
        let u = uname().unwrap();
        assert_eq!(u.sysname, "Linux");
        assert!(!u.release.is_empty());
    }

    proptest! {
        #[test]
        fn parse_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..80)) {
            let raw: Vec<libc::c_char> = raw.iter().map(|&b| b as libc::c_char).collect();
            let _ = parse_field(&raw);
        }
    }
}
