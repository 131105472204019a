//! Tracepoint record layouts from tracefs `format` files.
//!
//! The `sock:inet_sock_set_state` record layout is read at start-up rather than assumed,
//! so a kernel that moves a field still gets correct reads (or a clear error).

use std::collections::HashMap;

use agent_common::StateTpOffsets;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FormatError {
    #[error("tracepoint format has no field {field}")]
    MissingField { field: &'static str },
    #[error("tracepoint field {field} has size {size}, expected {expected}")]
    FieldSize {
        field: &'static str,
        size: u32,
        expected: u32,
    },
}

/// A field of a tracepoint record: offset and size in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracefs `format` file into name -> field. Lines that
/// do not parse are skipped: the caller asks for the fields it needs by name.
pub fn parse_format(text: &str) -> HashMap<String, Field> {
    let mut fields = HashMap::new();
    for line in text.lines() {
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in line.split(';') {
            let part = part.trim();
            if let Some(rest) = part.strip_prefix("field:") {
                decl = Some(rest);
            } else if let Some(rest) = part.strip_prefix("offset:") {
                offset = rest.parse::<u32>().ok();
            } else if let Some(rest) = part.strip_prefix("size:") {
                size = rest.parse::<u32>().ok();
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            continue;
        };
        // "const void * skaddr" or "__u8 saddr[4]": the name is the last word, less any
        // array suffix.
        let Some(last) = decl.split_whitespace().last() else {
            continue;
        };
        let name = last
            .split('[')
            .next()
            .unwrap_or(last)
            .trim_start_matches('*');
        if !name.is_empty() {
            fields.insert(name.to_owned(), Field { offset, size });
        }
    }
    fields
}

/// The offsets the close-tracking program needs from `sock:inet_sock_set_state`.
pub fn state_offsets(fields: &HashMap<String, Field>) -> Result<StateTpOffsets, FormatError> {
    let get = |field: &'static str, expected: u32| -> Result<u32, FormatError> {
        let f = fields
            .get(field)
            .ok_or(FormatError::MissingField { field })?;
        if f.size != expected {
            return Err(FormatError::FieldSize {
                field,
                size: f.size,
                expected,
            });
        }
        Ok(f.offset)
    };
    Ok(StateTpOffsets {
        skaddr: get("skaddr", 8)?,
        oldstate: get("oldstate", 4)?,
        newstate: get("newstate", 4)?,
        sport: get("sport", 2)?,
        dport: get("dport", 2)?,
        family: get("family", 2)?,
        protocol: get("protocol", 2)?,
        saddr: get("saddr", 4)?,
        daddr: get("daddr", 4)?,
        saddr_v6: get("saddr_v6", 16)?,
        daddr_v6: get("daddr_v6", 16)?,
        _pad: 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str =
        include_str!("../../../tests/fixtures/tracefs/inet_sock_set_state.format");

    #[test]
    fn reads_inet_sock_set_state_layout() {
        let off = state_offsets(&parse_format(FIXTURE)).unwrap();
        assert_eq!(
            off,
            StateTpOffsets {
                skaddr: 8,
                oldstate: 16,
                newstate: 20,
                sport: 24,
                dport: 26,
                family: 28,
                protocol: 30,
                saddr: 32,
                daddr: 36,
                saddr_v6: 40,
                daddr_v6: 56,
                _pad: 0,
            }
        );
    }

    #[test]
    fn names_a_missing_or_resized_field() {
        let without = FIXTURE.replace("field:__u16 protocol;", "field:__u16 proto;");
        assert_eq!(
            state_offsets(&parse_format(&without))
                .unwrap_err()
                .to_string(),
            "tracepoint format has no field protocol"
        );
        let resized = FIXTURE.replace("offset:30;\tsize:2;", "offset:30;\tsize:4;");
        assert!(matches!(
            state_offsets(&parse_format(&resized)),
            Err(FormatError::FieldSize {
                field: "protocol",
                ..
            })
        ));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(text in "\\PC*") {
            let _ = state_offsets(&parse_format(&text));
        }
    }
}
