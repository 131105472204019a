//! A small reader of the kernel's BTF (`/sys/kernel/btf/vmlinux`), just enough to find
//! the byte offset of a struct member by name.
//!
//! Rust eBPF programs have no CO-RE relocations, so the agent relocates for them: it
//! reads the offsets the kernel programs need from the running kernel's BTF and passes
//! them in the programs' configuration. Format: Documentation/bpf/btf.rst.

use std::collections::HashMap;

use agent_common::KernelOffsets;

const BTF_MAGIC: u16 = 0xeb9f;
const HEADER_MIN: usize = 24;

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BtfError {
    #[error("not BTF data (bad magic or header)")]
    BadHeader,
    #[error("BTF data truncated at byte {at}")]
    Truncated { at: usize },
    #[error("unknown BTF kind {kind} for type {id}")]
    UnknownKind { kind: u32, id: u32 },
    #[error("struct {name} not found in the kernel's BTF")]
    NoStruct { name: String },
    #[error("member {member} of struct {name} not found in the kernel's BTF")]
    NoMember { name: String, member: String },
    #[error("member {member} of struct {name} is a bitfield; the agent needs byte-aligned fields")]
    Bitfield { name: String, member: String },
}

#[derive(Clone, Debug)]
struct Member {
    name_off: u32,
    type_id: u32,
    /// Offset in bits; `bitfield` is set when the member is a bitfield.
    bit_offset: u32,
    bitfield: bool,
}

#[derive(Clone, Debug)]
struct Type {
    kind: u32,
    name_off: u32,
    /// The referenced type for modifiers and typedefs.
    type_ref: u32,
    members: Vec<Member>,
}

/// The types of one BTF blob, indexed by type id (id 0 is `void`).
pub struct Btf {
    types: Vec<Type>,
    strings: Vec<u8>,
    structs_by_name: HashMap<String, u32>,
}

fn u16_at(data: &[u8], at: usize) -> Result<u16, BtfError> {
    data.get(at..at + 2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .ok_or(BtfError::Truncated { at })
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Truncated { at })
}

impl Btf {
    /// Parses little-endian BTF as the kernel exposes it.
    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        if data.len() < HEADER_MIN || u16_at(data, 0)? != BTF_MAGIC {
            return Err(BtfError::BadHeader);
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let type_off = u32_at(data, 8)? as usize;
        let type_len = u32_at(data, 12)? as usize;
        let str_off = u32_at(data, 16)? as usize;
        let str_len = u32_at(data, 20)? as usize;
        let type_start = hdr_len.checked_add(type_off).ok_or(BtfError::BadHeader)?;
        let type_end = type_start
            .checked_add(type_len)
            .ok_or(BtfError::BadHeader)?;
        let str_start = hdr_len.checked_add(str_off).ok_or(BtfError::BadHeader)?;
        let str_end = str_start.checked_add(str_len).ok_or(BtfError::BadHeader)?;
        let type_data = data
            .get(type_start..type_end)
            .ok_or(BtfError::Truncated { at: type_end })?;
        let strings = data
            .get(str_start..str_end)
            .ok_or(BtfError::Truncated { at: str_end })?
            .to_vec();

        let mut types = vec![Type {
            kind: 0,
            name_off: 0,
            type_ref: 0,
            members: Vec::new(),
        }];
        let mut at = 0;
        while at < type_data.len() {
            let id = types.len() as u32;
            let name_off = u32_at(type_data, at)?;
            let info = u32_at(type_data, at + 4)?;
            let size_or_type = u32_at(type_data, at + 8)?;
            at += 12;
            let kind = (info >> 24) & 0x1f;
            let vlen = (info & 0xffff) as usize;
            let kind_flag = info >> 31 == 1;
            let mut members = Vec::new();
            let extra = match kind {
                KIND_INT | KIND_VAR | KIND_DECL_TAG => 4,
                KIND_ARRAY => 12,
                KIND_STRUCT | KIND_UNION => {
                    members.reserve(vlen);
                    for i in 0..vlen {
                        let m = at + i * 12;
                        let offset = u32_at(type_data, m + 8)?;
                        let (bit_offset, bitfield) = if kind_flag {
                            (offset & 0x00ff_ffff, offset >> 24 != 0)
                        } else {
                            (offset, false)
                        };
                        members.push(Member {
                            name_off: u32_at(type_data, m)?,
                            type_id: u32_at(type_data, m + 4)?,
                            bit_offset,
                            bitfield,
                        });
                    }
                    vlen * 12
                }
                KIND_ENUM | KIND_FUNC_PROTO => vlen * 8,
                KIND_DATASEC | KIND_ENUM64 => vlen * 12,
                KIND_PTR | KIND_FWD | KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT
                | KIND_FUNC | KIND_FLOAT | KIND_TYPE_TAG => 0,
                _ => return Err(BtfError::UnknownKind { kind, id }),
            };
            at += extra;
            if at > type_data.len() {
                return Err(BtfError::Truncated { at });
            }
            types.push(Type {
                kind,
                name_off,
                type_ref: size_or_type,
                members,
            });
        }
        let mut btf = Btf {
            types,
            strings,
            structs_by_name: HashMap::new(),
        };
        for (id, t) in btf.types.iter().enumerate() {
            // The first struct of a name wins: vmlinux has one definition per name.
            if t.kind == KIND_STRUCT && t.name_off != 0 {
                let name = btf.name(t.name_off).to_owned();
                btf.structs_by_name.entry(name).or_insert(id as u32);
            }
        }
        Ok(btf)
    }

    fn name(&self, off: u32) -> &str {
        let Some(rest) = self.strings.get(off as usize..) else {
            return "";
        };
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        std::str::from_utf8(&rest[..end]).unwrap_or("")
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<&Type> {
        for _ in 0..32 {
            let t = self.types.get(id as usize)?;
            match t.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = t.type_ref
                }
                _ => return Some(t),
            }
        }
        None
    }

    /// Byte offset of `path` (members separated by dots, e.g. `__sk_common.skc_family`)
    /// in struct `name`. Members of anonymous unions and structs are found as the C
    /// compiler finds them.
    pub fn member_offset(&self, name: &str, path: &str) -> Result<u32, BtfError> {
        let no_member = || BtfError::NoMember {
            name: name.to_owned(),
            member: path.to_owned(),
        };
        let id = *self
            .structs_by_name
            .get(name)
            .ok_or_else(|| BtfError::NoStruct {
                name: name.to_owned(),
            })?;
        let mut current = &self.types[id as usize];
        let mut total_bits = 0u32;
        for part in path.split('.') {
            let (bits, member) = self.find_member(current, part, 0).ok_or_else(no_member)?;
            if member.bitfield || bits % 8 != 0 {
                return Err(BtfError::Bitfield {
                    name: name.to_owned(),
                    member: path.to_owned(),
                });
            }
            total_bits += bits;
            current = self.resolve(member.type_id).ok_or_else(no_member)?;
        }
        Ok(total_bits / 8)
    }

    fn find_member<'a>(
        &'a self,
        t: &'a Type,
        wanted: &str,
        depth: u32,
    ) -> Option<(u32, &'a Member)> {
        if depth > 8 || !(t.kind == KIND_STRUCT || t.kind == KIND_UNION) {
            return None;
        }
        for m in &t.members {
            if m.name_off != 0 && self.name(m.name_off) == wanted {
                return Some((m.bit_offset, m));
            }
        }
        for m in &t.members {
            if m.name_off == 0 {
                let inner = self.resolve(m.type_id)?;
                if let Some((bits, found)) = self.find_member(inner, wanted, depth + 1) {
                    return Some((m.bit_offset + bits, found));
                }
            }
        }
        None
    }

    /// The offsets the kernel programs need (see agent-ebpf/src/socket.rs).
    pub fn kernel_offsets(&self) -> Result<KernelOffsets, BtfError> {
        let sk = |member: &str| self.member_offset("sock", member);
        Ok(KernelOffsets {
            task_files: self.member_offset("task_struct", "files")?,
            task_group_leader: self.member_offset("task_struct", "group_leader")?,
            task_comm: self.member_offset("task_struct", "comm")?,
            files_fdt: self.member_offset("files_struct", "fdt")?,
            fdtable_max_fds: self.member_offset("fdtable", "max_fds")?,
            fdtable_fd: self.member_offset("fdtable", "fd")?,
            file_private_data: self.member_offset("file", "private_data")?,
            file_inode: self.member_offset("file", "f_inode")?,
            inode_mode: self.member_offset("inode", "i_mode")?,
            inode_ino: self.member_offset("inode", "i_ino")?,
            socket_sk: self.member_offset("socket", "sk")?,
            sk_family: sk("__sk_common.skc_family")?,
            sk_daddr: sk("__sk_common.skc_daddr")?,
            sk_rcv_saddr: sk("__sk_common.skc_rcv_saddr")?,
            sk_dport: sk("__sk_common.skc_dport")?,
            sk_num: sk("__sk_common.skc_num")?,
            sk_v6_daddr: sk("__sk_common.skc_v6_daddr")?,
            sk_v6_rcv_saddr: sk("__sk_common.skc_v6_rcv_saddr")?,
            sk_protocol: sk("sk_protocol")?,
            sk_type: sk("sk_type")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds a BTF blob: `int`, and `struct outer { int a; union { int b; struct { int
    /// c; int d; }; }; int e:3; }`.
    fn sample() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0d\0e\0".to_vec();
        let name = |s: &str| {
            let needle = format!("\0{s}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let push_u32 = |v: u32, out: &mut Vec<u8>| out.extend_from_slice(&v.to_le_bytes());
        // 1: int
        push_u32(name("int"), &mut types);
        push_u32(KIND_INT << 24, &mut types);
        push_u32(4, &mut types);
        push_u32(32, &mut types);
        // 2: anonymous struct { int c; int d; }
        push_u32(0, &mut types);
        push_u32((KIND_STRUCT << 24) | 2, &mut types);
        push_u32(8, &mut types);
        for (n, off) in [("c", 0), ("d", 32)] {
            push_u32(name(n), &mut types);
            push_u32(1, &mut types);
            push_u32(off, &mut types);
        }
        // 3: anonymous union { int b; struct 2; }
        push_u32(0, &mut types);
        push_u32((KIND_UNION << 24) | 2, &mut types);
        push_u32(8, &mut types);
        push_u32(name("b"), &mut types);
        push_u32(1, &mut types);
        push_u32(0, &mut types);
        push_u32(0, &mut types);
        push_u32(2, &mut types);
        push_u32(0, &mut types);
        // 4: struct outer, kind_flag set for the bitfield member
        push_u32(name("outer"), &mut types);
        push_u32((1 << 31) | (KIND_STRUCT << 24) | 3, &mut types);
        push_u32(16, &mut types);
        push_u32(name("a"), &mut types);
        push_u32(1, &mut types);
        push_u32(0, &mut types);
        push_u32(0, &mut types);
        push_u32(3, &mut types);
        push_u32(32, &mut types);
        push_u32(name("e"), &mut types);
        push_u32(1, &mut types);
        push_u32((3 << 24) | 96, &mut types);

        let mut blob = Vec::new();
        blob.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        blob.push(1);
        blob.push(0);
        blob.extend_from_slice(&24u32.to_le_bytes());
        blob.extend_from_slice(&0u32.to_le_bytes());
        blob.extend_from_slice(&(types.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(types.len() as u32).to_le_bytes());
        blob.extend_from_slice(&(strings.len() as u32).to_le_bytes());
        blob.extend_from_slice(&types);
        blob.extend_from_slice(&strings);
        blob
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_structs() {
        let btf = Btf::parse(&sample()).unwrap();
        assert_eq!(btf.member_offset("outer", "a"), Ok(0));
        assert_eq!(btf.member_offset("outer", "b"), Ok(4));
        assert_eq!(btf.member_offset("outer", "c"), Ok(4));
        assert_eq!(btf.member_offset("outer", "d"), Ok(8));
    }

    #[test]
    fn refuses_bitfields_and_names_what_is_missing() {
        let btf = Btf::parse(&sample()).unwrap();
        assert!(matches!(
            btf.member_offset("outer", "e"),
            Err(BtfError::Bitfield { .. })
        ));
        assert_eq!(
            btf.member_offset("outer", "zz").unwrap_err().to_string(),
            "member zz of struct outer not found in the kernel's BTF"
        );
        assert!(matches!(
            btf.member_offset("nope", "a"),
            Err(BtfError::NoStruct { .. })
        ));
    }

    #[test]
    fn rejects_truncated_and_garbage_input() {
        let blob = sample();
        for cut in 0..blob.len() - 1 {
            // Every prefix either parses (cut inside the string section) or fails cleanly.
            let _ = Btf::parse(&blob[..cut]);
        }
        assert_eq!(Btf::parse(b"nonsense").err(), Some(BtfError::BadHeader));
    }

    /// The running kernel's BTF has every offset the kernel programs use.
    #[test]
    fn running_kernel_has_all_offsets() {
        let data = std::fs::read("/sys/kernel/btf/vmlinux")
            .expect("/sys/kernel/btf/vmlinux must exist: nodetap needs a kernel with BTF");
        let btf = Btf::parse(&data).unwrap();
        let off = btf.kernel_offsets().unwrap();
        // struct sock starts with struct sock_common; these sit inside it.
        assert!(off.sk_family < 64 && off.sk_num < 64, "{off:?}");
        assert_ne!(off.task_files, 0);
    }

    proptest::proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = Btf::parse(&data);
            let mut with_magic = sample();
            let n = data.len().min(with_magic.len() - 4);
            with_magic[4..4 + n].copy_from_slice(&data[..n]);
            if let Ok(btf) = Btf::parse(&with_magic) {
                let _ = btf.member_offset("outer", "d");
            }
        }
    }
}
