//! HPACK (RFC 7541): a header block decoder with a bounded dynamic table.
//!
//! One [`Decoder`] per direction of an HTTP/2 connection: HPACK state is per encoder, and
//! each endpoint encodes its own header blocks. The decoder is pure: a complete header block
//! in, its fields out (through a callback, so nothing is collected that the caller does not
//! keep), no I/O.
//!
//! # Memory
//!
//! The dynamic table holds at most its maximum size in the RFC's accounting (name + value +
//! 32 octets per entry, RFC 7541 §4.1), and that maximum is never above [`MAX_TABLE_SIZE`]:
//! an encoder that asks for more (the protocol allows up to 2^32 - 1 through
//! SETTINGS_HEADER_TABLE_SIZE) gets [`HpackError::TableTooLarge`], and the caller stops
//! decoding that connection. Strings longer than [`MAX_STRING`] are refused the same way.
//! The scratch buffers for Huffman-decoded strings are bounded by that and given back when a
//! block needed a large one.
//!
//! # Errors
//!
//! Any error leaves the dynamic table in a state that no longer matches the encoder's (a
//! block is decoded in order, and entries inserted before the error stay): the caller must
//! stop using the decoder (RFC 7541 §2.3.3 and RFC 9113 §4.3 make it a connection error).

use std::collections::VecDeque;
use std::ops::Range;

/// Initial maximum size of the dynamic table: SETTINGS_HEADER_TABLE_SIZE's default
/// (RFC 9113 §6.5.2).
pub const DEFAULT_TABLE_SIZE: usize = 4096;
/// Largest dynamic table this decoder keeps, per direction.
pub const MAX_TABLE_SIZE: usize = 64 * 1024;
/// Longest string literal accepted, encoded or decoded.
pub const MAX_STRING: usize = 64 * 1024;
/// Scratch capacity kept between blocks; more is given back after the block that needed it.
const SCRATCH_KEEP: usize = 4096;
/// Size overhead of a dynamic table entry (RFC 7541 §4.1).
const ENTRY_OVERHEAD: usize = 32;

/// Why a header block could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum HpackError {
    /// The block ends inside a field representation.
    #[error("header block ends inside a field")]
    Truncated,
    /// An integer does not fit (RFC 7541 §5.1 leaves the limit to the implementation).
    #[error("integer too large")]
    IntegerOverflow,
    /// Index 0 (RFC 7541 §6.1).
    #[error("index 0")]
    ZeroIndex,
    /// An index past the end of the dynamic table (RFC 7541 §2.3.3).
    #[error("index past the end of the dynamic table")]
    BadIndex,
    /// A Huffman string with an invalid code: EOS, or padding that is not the EOS prefix
    /// or is longer than 7 bits (RFC 7541 §5.2).
    #[error("invalid huffman code")]
    Huffman,
    /// A string longer than [`MAX_STRING`].
    #[error("string literal too long")]
    StringTooLong,
    /// A dynamic table size update after the first field of a block (RFC 7541 §4.2).
    #[error("dynamic table size update after a field")]
    SizeUpdateMisplaced,
    /// A dynamic table size update above what SETTINGS_HEADER_TABLE_SIZE allows
    /// (RFC 7541 §6.3).
    #[error("dynamic table size update above SETTINGS_HEADER_TABLE_SIZE")]
    SizeUpdateAboveLimit,
    /// A dynamic table larger than [`MAX_TABLE_SIZE`], which this decoder does not keep.
    #[error("dynamic table larger than this decoder keeps")]
    TableTooLarge,
}

/// The static table (RFC 7541 Appendix A); index `i` of the RFC is `STATIC_TABLE[i - 1]`.
#[rustfmt::skip]
pub const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""), (":method", "GET"), (":method", "POST"), (":path", "/"),
    (":path", "/index.html"), (":scheme", "http"), (":scheme", "https"), (":status", "200"),
    (":status", "204"), (":status", "206"), (":status", "304"), (":status", "400"),
    (":status", "404"), (":status", "500"), ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"), ("accept-language", ""), ("accept-ranges", ""),
    ("accept", ""), ("access-control-allow-origin", ""), ("age", ""), ("allow", ""),
    ("authorization", ""), ("cache-control", ""), ("content-disposition", ""),
    ("content-encoding", ""), ("content-language", ""), ("content-length", ""),
    ("content-location", ""), ("content-range", ""), ("content-type", ""), ("cookie", ""),
    ("date", ""), ("etag", ""), ("expect", ""), ("expires", ""), ("from", ""), ("host", ""),
    ("if-match", ""), ("if-modified-since", ""), ("if-none-match", ""), ("if-range", ""),
    ("if-unmodified-since", ""), ("last-modified", ""), ("link", ""), ("location", ""),
    ("max-forwards", ""), ("proxy-authenticate", ""), ("proxy-authorization", ""),
    ("range", ""), ("referer", ""), ("refresh", ""), ("retry-after", ""), ("server", ""),
    ("set-cookie", ""), ("strict-transport-security", ""), ("transfer-encoding", ""),
    ("user-agent", ""), ("vary", ""), ("via", ""), ("www-authenticate", ""),
];

/// One dynamic table entry: name and value in one allocation.
#[derive(Clone, Debug)]
struct Entry {
    bytes: Box<[u8]>,
    name_len: usize,
}

impl Entry {
    fn name(&self) -> &[u8] {
        &self.bytes[..self.name_len]
    }
    fn value(&self) -> &[u8] {
        &self.bytes[self.name_len..]
    }
    fn size(&self) -> usize {
        self.bytes.len() + ENTRY_OVERHEAD
    }
}

/// The dynamic table (RFC 7541 §2.3.2): newest entry first.
#[derive(Clone, Debug)]
struct Table {
    entries: VecDeque<Entry>,
    /// Sum of the entries' sizes (RFC 7541 §4.1).
    size: usize,
    /// Current maximum size (RFC 7541 §4.2), at most [`MAX_TABLE_SIZE`].
    max_size: usize,
}

impl Table {
    fn get(&self, index: usize) -> Result<(&[u8], &[u8]), HpackError> {
        match index {
            0 => Err(HpackError::ZeroIndex),
            1..=61 => {
                let (n, v) = STATIC_TABLE[index - 1];
                Ok((n.as_bytes(), v.as_bytes()))
            }
            _ => self
                .entries
                .get(index - 62)
                .map(|e| (e.name(), e.value()))
                .ok_or(HpackError::BadIndex),
        }
    }

    fn evict_to(&mut self, limit: usize) {
        while self.size > limit {
            let e = self.entries.pop_back().expect("size > 0 means entries");
            self.size -= e.size();
        }
    }

    fn set_max(&mut self, max: usize) {
        self.max_size = max;
        self.evict_to(max);
        if self.entries.is_empty() && self.entries.capacity() > 64 {
            self.entries = VecDeque::new();
        }
    }

    /// RFC 7541 §4.4: evict until the new entry fits; an entry larger than the table
    /// empties it and is not added.
    fn insert(&mut self, name: &[u8], value: &[u8]) {
        let size = name.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_size {
            self.evict_to(0);
            return;
        }
        self.evict_to(self.max_size - size);
        let mut bytes = Vec::with_capacity(name.len() + value.len());
        bytes.extend_from_slice(name);
        bytes.extend_from_slice(value);
        self.entries.push_front(Entry {
            bytes: bytes.into_boxed_slice(),
            name_len: name.len(),
        });
        self.size += size;
    }
}

/// An HPACK decoder for the header blocks of one encoder (one direction of a connection).
#[derive(Clone, Debug)]
pub struct Decoder {
    table: Table,
    /// The largest size a dynamic table size update may ask for: what the decoding side
    /// allowed through SETTINGS_HEADER_TABLE_SIZE.
    limit: usize,
    name_buf: Vec<u8>,
    value_buf: Vec<u8>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder for a new connection: empty table of [`DEFAULT_TABLE_SIZE`].
    pub fn new() -> Self {
        Self {
            table: Table {
                entries: VecDeque::new(),
                size: 0,
                max_size: DEFAULT_TABLE_SIZE,
            },
            limit: DEFAULT_TABLE_SIZE,
            name_buf: Vec::new(),
            value_buf: Vec::new(),
        }
    }

    /// Sets the largest table size the encoder may use (the decoding side's
    /// SETTINGS_HEADER_TABLE_SIZE, once in force). A limit below the current maximum also
    /// shrinks the table, as the encoder must (RFC 7541 §4.2: its next block starts with a
    /// size update to at most this value, which evicts at least as much).
    pub fn set_limit(&mut self, limit: usize) {
        self.limit = limit;
        if limit < self.table.max_size {
            self.table.set_max(limit);
        }
    }

    /// The limit set by [`Decoder::set_limit`].
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Current maximum size of the dynamic table.
    pub fn max_size(&self) -> usize {
        self.table.max_size
    }

    /// Current size of the dynamic table (RFC 7541 §4.1 accounting).
    pub fn table_size(&self) -> usize {
        self.table.size
    }

    /// Entries in the dynamic table.
    pub fn table_len(&self) -> usize {
        self.table.entries.len()
    }

    /// Bytes this decoder holds on the heap (table entries and scratch), for bounds checks.
    pub fn heap_bytes(&self) -> usize {
        self.table
            .entries
            .iter()
            .map(|e| e.bytes.len())
            .sum::<usize>()
            + self.table.entries.capacity() * std::mem::size_of::<Entry>()
            + self.name_buf.capacity()
            + self.value_buf.capacity()
    }

    /// Decodes one complete header block (the concatenated fragments of a HEADERS or
    /// PUSH_PROMISE frame and its CONTINUATION frames), calling `on_field(name, value)` for
    /// each field in order.
    pub fn decode(
        &mut self,
        block: &[u8],
        mut on_field: impl FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let result = self.decode_inner(block, &mut on_field);
        for buf in [&mut self.name_buf, &mut self.value_buf] {
            if buf.capacity() > SCRATCH_KEEP {
                *buf = Vec::new();
            }
        }
        result
    }

    fn decode_inner(
        &mut self,
        block: &[u8],
        on_field: &mut dyn FnMut(&[u8], &[u8]),
    ) -> Result<(), HpackError> {
        let mut pos = 0;
        let mut fields = false;
        while pos < block.len() {
            let b = block[pos];
            if b & 0x80 != 0 {
                // Indexed header field (RFC 7541 §6.1).
                let index = integer(block, &mut pos, 7)?;
                let (name, value) = self.table.get(index)?;
                on_field(name, value);
            } else if b & 0xe0 == 0x20 {
                // Dynamic table size update (RFC 7541 §6.3): only before the first field.
                if fields {
                    return Err(HpackError::SizeUpdateMisplaced);
                }
                let size = integer(block, &mut pos, 5)?;
                if size > self.limit {
                    return Err(HpackError::SizeUpdateAboveLimit);
                }
                if size > MAX_TABLE_SIZE {
                    return Err(HpackError::TableTooLarge);
                }
                self.table.set_max(size);
                continue;
            } else {
                // Literal fields (RFC 7541 §6.2): with incremental indexing (01, 6-bit
                // index), without indexing (0000) or never indexed (0001), 4-bit index.
                let indexing = b & 0x40 != 0;
                let index = integer(block, &mut pos, if indexing { 6 } else { 4 })?;
                let Decoder {
                    table,
                    name_buf,
                    value_buf,
                    ..
                } = self;
                // The name: a literal (raw in the block, or Huffman in `name_buf`), or from
                // a table. A table name that is about to be indexed is copied first: the
                // insertion may evict the entry it comes from.
                let name_at = if index == 0 {
                    string(block, &mut pos, name_buf)?
                } else {
                    let name = table.get(index)?.0;
                    if indexing {
                        name_buf.clear();
                        name_buf.extend_from_slice(name);
                    }
                    None
                };
                let value_at = string(block, &mut pos, value_buf)?;
                let value = pick(block, value_at, value_buf);
                if indexing {
                    let name = pick(block, name_at, name_buf);
                    on_field(name, value);
                    table.insert(name, value);
                } else {
                    let name = match name_at {
                        Some(r) => &block[r],
                        None if index == 0 => &name_buf[..],
                        None => table.get(index)?.0,
                    };
                    on_field(name, value);
                }
            }
            fields = true;
        }
        Ok(())
    }
}

/// Where a decoded string is: raw bytes of the block, or the scratch buffer (Huffman).
fn pick<'a>(block: &'a [u8], at: Option<Range<usize>>, scratch: &'a [u8]) -> &'a [u8] {
    match at {
        Some(r) => &block[r],
        None => scratch,
    }
}

/// An integer with an `n`-bit prefix at `block[*pos..]` (RFC 7541 §5.1). Values above
/// `u32::MAX` are refused, which also bounds the continuation bytes.
pub fn integer(block: &[u8], pos: &mut usize, n: u32) -> Result<usize, HpackError> {
    let mask = (1u32 << n) - 1;
    let first = *block.get(*pos).ok_or(HpackError::Truncated)?;
    *pos += 1;
    let mut value = u64::from(u32::from(first) & mask);
    if value < u64::from(mask) {
        return Ok(value as usize);
    }
    let mut shift = 0;
    loop {
        let b = *block.get(*pos).ok_or(HpackError::Truncated)?;
        *pos += 1;
        value += u64::from(b & 0x7f) << shift;
        if value > u64::from(u32::MAX) {
            return Err(HpackError::IntegerOverflow);
        }
        if b & 0x80 == 0 {
            return Ok(value as usize);
        }
        shift += 7;
        if shift > 28 {
            return Err(HpackError::IntegerOverflow);
        }
    }
}

/// A string literal at `block[*pos..]` (RFC 7541 §5.2): `Some(range)` of the block for a
/// raw string, `None` when it was Huffman-decoded into `scratch`.
fn string(
    block: &[u8],
    pos: &mut usize,
    scratch: &mut Vec<u8>,
) -> Result<Option<Range<usize>>, HpackError> {
    let huffman = block.get(*pos).ok_or(HpackError::Truncated)? & 0x80 != 0;
    let len = integer(block, pos, 7)?;
    if len > MAX_STRING {
        return Err(HpackError::StringTooLong);
    }
    let end = pos.checked_add(len).ok_or(HpackError::Truncated)?;
    if end > block.len() {
        return Err(HpackError::Truncated);
    }
    let range = *pos..end;
    *pos = end;
    if !huffman {
        return Ok(Some(range));
    }
    scratch.clear();
    huffman_decode(&block[range], scratch)?;
    if scratch.len() > MAX_STRING {
        return Err(HpackError::StringTooLong);
    }
    Ok(None)
}

// ---- Huffman code (RFC 7541 Appendix B) -----------------------------------------------------

/// The Huffman code of each symbol (0..=255, then EOS = 256): the code, aligned to the least
/// significant bit, and its length in bits. Transcribed from RFC 7541 Appendix B.
#[rustfmt::skip]
pub const HUFFMAN_CODES: [(u32, u8); 257] = [
    // 0..=31
    (0x1ff8, 13), (0x7fffd8, 23), (0xfffffe2, 28), (0xfffffe3, 28),
    (0xfffffe4, 28), (0xfffffe5, 28), (0xfffffe6, 28), (0xfffffe7, 28),
    (0xfffffe8, 28), (0xffffea, 24), (0x3ffffffc, 30), (0xfffffe9, 28),
    (0xfffffea, 28), (0x3ffffffd, 30), (0xfffffeb, 28), (0xfffffec, 28),
    (0xfffffed, 28), (0xfffffee, 28), (0xfffffef, 28), (0xffffff0, 28),
    (0xffffff1, 28), (0xffffff2, 28), (0x3ffffffe, 30), (0xffffff3, 28),
    (0xffffff4, 28), (0xffffff5, 28), (0xffffff6, 28), (0xffffff7, 28),
    (0xffffff8, 28), (0xffffff9, 28), (0xffffffa, 28), (0xffffffb, 28),
    // ' ' ! " # $ % & '
    (0x14, 6), (0x3f8, 10), (0x3f9, 10), (0xffa, 12),
    (0x1ff9, 13), (0x15, 6), (0xf8, 8), (0x7fa, 11),
    // ( ) * + , - . /
    (0x3fa, 10), (0x3fb, 10), (0xf9, 8), (0x7fb, 11),
    (0xfa, 8), (0x16, 6), (0x17, 6), (0x18, 6),
    // 0..9
    (0x0, 5), (0x1, 5), (0x2, 5), (0x19, 6), (0x1a, 6), (0x1b, 6), (0x1c, 6), (0x1d, 6),
    (0x1e, 6), (0x1f, 6),
    // : ; < = > ? @
    (0x5c, 7), (0xfb, 8), (0x7ffc, 15), (0x20, 6), (0xffb, 12), (0x3fc, 10), (0x1ffa, 13),
    // A..Z
    (0x21, 6), (0x5d, 7), (0x5e, 7), (0x5f, 7), (0x60, 7), (0x61, 7), (0x62, 7), (0x63, 7),
    (0x64, 7), (0x65, 7), (0x66, 7), (0x67, 7), (0x68, 7), (0x69, 7), (0x6a, 7), (0x6b, 7),
    (0x6c, 7), (0x6d, 7), (0x6e, 7), (0x6f, 7), (0x70, 7), (0x71, 7), (0x72, 7), (0xfc, 8),
    (0x73, 7), (0xfd, 8),
    // [ \ ] ^ _ `
    (0x1ffb, 13), (0x7fff0, 19), (0x1ffc, 13), (0x3ffc, 14), (0x22, 6), (0x7ffd, 15),
    // a..z
    (0x3, 5), (0x23, 6), (0x4, 5), (0x24, 6), (0x5, 5), (0x25, 6), (0x26, 6), (0x27, 6),
    (0x6, 5), (0x74, 7), (0x75, 7), (0x28, 6), (0x29, 6), (0x2a, 6), (0x7, 5), (0x2b, 6),
    (0x76, 7), (0x2c, 6), (0x8, 5), (0x9, 5), (0x2d, 6), (0x77, 7), (0x78, 7), (0x79, 7),
    (0x7a, 7), (0x7b, 7),
    // { | } ~ 127
    (0x7ffe, 15), (0x7fc, 11), (0x3ffd, 14), (0x1ffd, 13), (0xffffffc, 28),
    // 128..=255
    (0xfffe6, 20), (0x3fffd2, 22), (0xfffe7, 20), (0xfffe8, 20),
    (0x3fffd3, 22), (0x3fffd4, 22), (0x3fffd5, 22), (0x7fffd9, 23),
    (0x3fffd6, 22), (0x7fffda, 23), (0x7fffdb, 23), (0x7fffdc, 23),
    (0x7fffdd, 23), (0x7fffde, 23), (0xffffeb, 24), (0x7fffdf, 23),
    (0xffffec, 24), (0xffffed, 24), (0x3fffd7, 22), (0x7fffe0, 23),
    (0xffffee, 24), (0x7fffe1, 23), (0x7fffe2, 23), (0x7fffe3, 23),
    (0x7fffe4, 23), (0x1fffdc, 21), (0x3fffd8, 22), (0x7fffe5, 23),
    (0x3fffd9, 22), (0x7fffe6, 23), (0x7fffe7, 23), (0xffffef, 24),
    (0x3fffda, 22), (0x1fffdd, 21), (0xfffe9, 20), (0x3fffdb, 22),
    (0x3fffdc, 22), (0x7fffe8, 23), (0x7fffe9, 23), (0x1fffde, 21),
    (0x7fffea, 23), (0x3fffdd, 22), (0x3fffde, 22), (0xfffff0, 24),
    (0x1fffdf, 21), (0x3fffdf, 22), (0x7fffeb, 23), (0x7fffec, 23),
    (0x1fffe0, 21), (0x1fffe1, 21), (0x3fffe0, 22), (0x1fffe2, 21),
    (0x7fffed, 23), (0x3fffe1, 22), (0x7fffee, 23), (0x7fffef, 23),
    (0xfffea, 20), (0x3fffe2, 22), (0x3fffe3, 22), (0x3fffe4, 22),
    (0x7ffff0, 23), (0x3fffe5, 22), (0x3fffe6, 22), (0x7ffff1, 23),
    (0x3ffffe0, 26), (0x3ffffe1, 26), (0xfffeb, 20), (0x7fff1, 19),
    (0x3fffe7, 22), (0x7ffff2, 23), (0x3fffe8, 22), (0x1ffffec, 25),
    (0x3ffffe2, 26), (0x3ffffe3, 26), (0x3ffffe4, 26), (0x7ffffde, 27),
    (0x7ffffdf, 27), (0x3ffffe5, 26), (0xfffff1, 24), (0x1ffffed, 25),
    (0x7fff2, 19), (0x1fffe3, 21), (0x3ffffe6, 26), (0x7ffffe0, 27),
    (0x7ffffe1, 27), (0x3ffffe7, 26), (0x7ffffe2, 27), (0xfffff2, 24),
    (0x1fffe4, 21), (0x1fffe5, 21), (0x3ffffe8, 26), (0x3ffffe9, 26),
    (0xffffffd, 28), (0x7ffffe3, 27), (0x7ffffe4, 27), (0x7ffffe5, 27),
    (0xfffec, 20), (0xfffff3, 24), (0xfffed, 20), (0x1fffe6, 21),
    (0x3fffe9, 22), (0x1fffe7, 21), (0x1fffe8, 21), (0x7ffff3, 23),
    (0x3fffea, 22), (0x3fffeb, 22), (0x1ffffee, 25), (0x1ffffef, 25),
    (0xfffff4, 24), (0xfffff5, 24), (0x3ffffea, 26), (0x7ffff4, 23),
    (0x3ffffeb, 26), (0x7ffffe6, 27), (0x3ffffec, 26), (0x3ffffed, 26),
    (0x7ffffe7, 27), (0x7ffffe8, 27), (0x7ffffe9, 27), (0x7ffffea, 27),
    (0x7ffffeb, 27), (0xffffffe, 28), (0x7ffffec, 27), (0x7ffffed, 27),
    (0x7ffffee, 27), (0x7ffffef, 27), (0x7fffff0, 27), (0x3ffffee, 26),
    // EOS
    (0x3fffffff, 30),
];

const EOS: u16 = 256;
const MIN_LEN: usize = 5;
const MAX_LEN: usize = 30;

/// Decoding tables of the canonical code: per length `L`, the first code of that length,
/// the end of its range as a 32-bit left-aligned value (exclusive), and where its symbols
/// start in [`HuffmanTables::symbols`]. The code is canonical (RFC 7541 Appendix B: codes of
/// one length are consecutive, in symbol order, and each length's range follows the
/// previous one's), which the tests check on the transcribed table.
struct HuffmanTables {
    first: [u32; MAX_LEN + 1],
    end: [u64; MAX_LEN + 1],
    offset: [u16; MAX_LEN + 1],
    symbols: [u16; 257],
    /// By the next [`FAST_BITS`] bits: the length of the code they start (codes of up to
    /// that many bits, which are the common characters), or 0 for a longer code.
    fast: [u8; 1 << FAST_BITS],
}

/// Bits looked up at once in [`HuffmanTables::fast`].
const FAST_BITS: u32 = 10;

static HUFFMAN: HuffmanTables = huffman_tables();

const fn huffman_tables() -> HuffmanTables {
    let mut count = [0u16; MAX_LEN + 1];
    let mut first = [u32::MAX; MAX_LEN + 1];
    let mut i = 0;
    while i < 257 {
        let (code, len) = HUFFMAN_CODES[i];
        let len = len as usize;
        count[len] += 1;
        if code < first[len] {
            first[len] = code;
        }
        i += 1;
    }
    let mut offset = [0u16; MAX_LEN + 1];
    let mut end = [0u64; MAX_LEN + 1];
    let mut at = 0u16;
    let mut prev_end = 0u64;
    let mut len = MIN_LEN;
    while len <= MAX_LEN {
        offset[len] = at;
        at += count[len];
        end[len] = if count[len] == 0 {
            prev_end
        } else {
            ((first[len] as u64) + count[len] as u64) << (32 - len)
        };
        prev_end = end[len];
        len += 1;
    }
    let mut symbols = [0u16; 257];
    let mut s = 0;
    while s < 257 {
        let (code, len) = HUFFMAN_CODES[s];
        let len = len as usize;
        symbols[offset[len] as usize + (code - first[len]) as usize] = s as u16;
        s += 1;
    }
    // The length of a code of at most FAST_BITS bits depends on those bits only (each
    // length's range ends on a multiple of 2^(32 - length)).
    let mut fast = [0u8; 1 << FAST_BITS];
    let mut w = 0;
    while w < fast.len() {
        let window = (w as u64) << (32 - FAST_BITS);
        let mut len = MIN_LEN;
        while len <= FAST_BITS as usize && window >= end[len] {
            len += 1;
        }
        if len <= FAST_BITS as usize {
            fast[w] = len as u8;
        }
        w += 1;
    }
    HuffmanTables {
        first,
        end,
        offset,
        symbols,
        fast,
    }
}

/// Decodes a Huffman-coded string (RFC 7541 §5.2), appending to `out`.
pub fn huffman_decode(src: &[u8], out: &mut Vec<u8>) -> Result<(), HpackError> {
    let t = &HUFFMAN;
    // `acc` holds the `bits` not yet decoded, in its low bits.
    let mut acc: u64 = 0;
    let mut bits: u32 = 0;
    let mut bytes = src.iter();
    loop {
        // Keep at least MAX_LEN bits while input lasts, so any code is whole.
        while bits < MAX_LEN as u32 {
            match bytes.next() {
                Some(&b) => {
                    acc = (acc << 8) | u64::from(b);
                    bits += 8;
                }
                None => break,
            }
        }
        if bits == 0 {
            return Ok(());
        }
        // The next 32 bits, left-aligned; past the input, ones (the EOS prefix).
        let window = if bits >= 32 {
            (acc >> (bits - 32)) as u32
        } else {
            ((acc << (32 - bits)) as u32) | ((1u32 << (32 - bits)) - 1)
        };
        let mut len = usize::from(t.fast[(window >> (32 - FAST_BITS)) as usize]);
        if len == 0 {
            len = FAST_BITS as usize + 1;
        }
        while u64::from(window) >= t.end[len] {
            len += 1;
            if len > MAX_LEN {
                // Unreachable with a complete code; refuse rather than panic.
                return Err(HpackError::Huffman);
            }
        }
        if len as u32 > bits {
            // What is left is padding: at most 7 bits, all ones (RFC 7541 §5.2).
            let mask = (1u64 << bits) - 1;
            return if bits <= 7 && acc & mask == mask {
                Ok(())
            } else {
                Err(HpackError::Huffman)
            };
        }
        let index = usize::from(t.offset[len]) + ((window >> (32 - len)) - t.first[len]) as usize;
        let symbol = t.symbols[index];
        if symbol == EOS {
            return Err(HpackError::Huffman);
        }
        out.push(symbol as u8);
        bits -= len as u32;
        acc &= (1u64 << bits) - 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).expect("hex"))
            .collect()
    }

    fn fields(d: &mut Decoder, block: &[u8]) -> Result<Vec<(String, String)>, HpackError> {
        let mut v = Vec::new();
        d.decode(block, |n, x| {
            v.push((
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(x).into_owned(),
            ))
        })?;
        Ok(v)
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// (name, value) of the dynamic table, newest first.
    fn table(d: &Decoder) -> Vec<(String, String)> {
        d.table
            .entries
            .iter()
            .map(|e| {
                (
                    String::from_utf8_lossy(e.name()).into_owned(),
                    String::from_utf8_lossy(e.value()).into_owned(),
                )
            })
            .collect()
    }

    /// An integer with an `n`-bit prefix, the bits above the prefix set to `flags`.
    fn enc_int(flags: u8, n: u32, value: usize) -> Vec<u8> {
        let max = (1usize << n) - 1;
        if value < max {
            return vec![flags | value as u8];
        }
        let mut out = vec![flags | max as u8];
        let mut rest = value - max;
        while rest >= 128 {
            out.push((rest % 128) as u8 | 0x80);
            rest /= 128;
        }
        out.push(rest as u8);
        out
    }

    /// A reference Huffman encoder, for tests only.
    fn huffman_encode(s: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut acc: u64 = 0;
        let mut bits = 0;
        for &b in s {
            let (code, len) = HUFFMAN_CODES[usize::from(b)];
            acc = (acc << len) | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                out.push((acc >> (bits - 8)) as u8);
                bits -= 8;
                acc &= (1 << bits) - 1;
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) as u8) | ((1u8 << (8 - bits)) - 1));
        }
        out
    }

    #[test]
    fn huffman_table_is_the_canonical_complete_code() {
        // Kraft's sum is exactly 1: the code is complete (no gaps, no overlaps).
        let kraft: u64 = HUFFMAN_CODES.iter().map(|&(_, l)| 1u64 << (30 - l)).sum();
        assert_eq!(kraft, 1 << 30, "the transcribed code is not complete");
        // Rebuilding the canonical code from the lengths alone gives the transcribed codes.
        let mut order: Vec<usize> = (0..257).collect();
        order.sort_by_key(|&s| (HUFFMAN_CODES[s].1, s));
        let mut code = 0u32;
        let mut prev_len = HUFFMAN_CODES[order[0]].1;
        for (k, &s) in order.iter().enumerate() {
            let len = HUFFMAN_CODES[s].1;
            if k > 0 {
                code = (code + 1) << (len - prev_len);
            }
            prev_len = len;
            assert_eq!(HUFFMAN_CODES[s].0, code, "code of symbol {s}");
        }
        assert_eq!(HUFFMAN_CODES[256], (0x3fff_ffff, 30), "EOS");
        // Spot checks against the RFC's own words: '/' is 0x18 in 6 bits.
        assert_eq!(HUFFMAN_CODES[usize::from(b'/')], (0x18, 6));
    }

    #[test]
    fn huffman_round_trips_every_byte() {
        let all: Vec<u8> = (0..=255).collect();
        for s in [
            &all[..],
            b"",
            b"a",
            b"www.example.com",
            b"\xff\xfe\x00\x01",
            b"application/grpc",
        ] {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(s), &mut out).unwrap();
            assert_eq!(out, s);
        }
        for b in 0..=255u8 {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(&[b, b, b]), &mut out).unwrap();
            assert_eq!(out, [b, b, b], "byte {b}");
        }
    }

    #[test]
    fn huffman_rejects_bad_padding_and_eos() {
        let mut out = Vec::new();
        // RFC 7541 C.4.1: "www.example.com".
        huffman_decode(&hex("f1e3 c2e5 f23a 6ba0 ab90 f4ff"), &mut out).unwrap();
        assert_eq!(out, b"www.example.com");
        // Padding of 8 or more bits of ones.
        let mut enc = huffman_encode(b"abc");
        enc.push(0xff);
        assert_eq!(
            huffman_decode(&enc, &mut Vec::new()),
            Err(HpackError::Huffman)
        );
        // Padding that is not all ones: 'a' (00011) then 000.
        assert_eq!(
            huffman_decode(&[0b0001_1000], &mut Vec::new()),
            Err(HpackError::Huffman)
        );
        // EOS itself, padded.
        assert_eq!(
            huffman_decode(&[0xff, 0xff, 0xff, 0xff], &mut Vec::new()),
            Err(HpackError::Huffman)
        );
        // All ones of 4 bytes is EOS + 2 ones: an error; 1 byte of ones is padding only.
        assert_eq!(
            huffman_decode(&[0xff], &mut Vec::new()),
            Err(HpackError::Huffman)
        );
        let mut out = Vec::new();
        huffman_decode(&[0xfe], &mut out).unwrap_err();
    }

    #[test]
    fn integers_of_rfc_7541_appendix_c1() {
        // C.1.1: 10 on a 5-bit prefix; C.1.2: 1337 on a 5-bit prefix; C.1.3: 42 on 8 bits.
        let mut pos = 0;
        assert_eq!(integer(&[0b1110_1010], &mut pos, 5), Ok(10));
        let mut pos = 0;
        assert_eq!(integer(&[0x1f, 0x9a, 0x0a], &mut pos, 5), Ok(1337));
        assert_eq!(pos, 3);
        let mut pos = 0;
        assert_eq!(integer(&[42], &mut pos, 8), Ok(42));
        let mut pos = 0;
        assert_eq!(
            integer(&[0x1f, 0x9a], &mut pos, 5),
            Err(HpackError::Truncated)
        );
        let mut pos = 0;
        assert_eq!(
            integer(&[0x1f, 0xff, 0xff, 0xff, 0xff, 0x7f], &mut pos, 5),
            Err(HpackError::IntegerOverflow)
        );
        // Long runs of zero continuation bytes are bounded too.
        let mut pos = 0;
        assert_eq!(
            integer(&[0x1f, 0x80, 0x80, 0x80, 0x80, 0x80, 0x00], &mut pos, 5),
            Err(HpackError::IntegerOverflow)
        );
        let mut pos = 0;
        assert_eq!(
            integer(&[0x1f, 0xe0, 0xff, 0xff, 0xff, 0x0f], &mut pos, 5),
            Ok(u32::MAX as usize)
        );
    }

    #[test]
    fn field_representations_of_appendix_c2() {
        let mut d = Decoder::new();
        let f = fields(
            &mut d,
            &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
        )
        .unwrap();
        assert_eq!(f, pairs(&[("custom-key", "custom-header")]));
        assert_eq!(d.table_size(), 55);
        let mut d = Decoder::new();
        let f = fields(&mut d, &hex("040c 2f73 616d 706c 652f 7061 7468")).unwrap();
        assert_eq!(f, pairs(&[(":path", "/sample/path")]));
        assert_eq!(d.table_len(), 0);
        let f = fields(&mut d, &hex("1008 7061 7373 776f 7264 0673 6563 7265 74")).unwrap();
        assert_eq!(f, pairs(&[("password", "secret")]));
        assert_eq!(d.table_len(), 0);
        let f = fields(&mut d, &hex("82")).unwrap();
        assert_eq!(f, pairs(&[(":method", "GET")]));
    }

    /// RFC 7541 C.3 (raw) and C.4 (Huffman): three requests on one connection.
    #[test]
    fn requests_of_appendix_c3_and_c4() {
        let raw = [
            "8286 8441 0f77 7777 2e65 7861 6d70 6c65 2e63 6f6d",
            "8286 84be 5808 6e6f 2d63 6163 6865",
            "8287 85bf 400a 6375 7374 6f6d 2d6b 6579 0c63 7573 746f 6d2d 7661 6c75 65",
        ];
        let huff = [
            "8286 8441 8cf1 e3c2 e5f2 3a6b a0ab 90f4 ff",
            "8286 84be 5886 a8eb 1064 9cbf",
            "8287 85bf 4088 25a8 49e9 5ba9 7d7f 8925 a849 e95b b8e8 b4bf",
        ];
        for blocks in [raw, huff] {
            let mut d = Decoder::new();
            let base = [
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "www.example.com"),
            ];
            assert_eq!(fields(&mut d, &hex(blocks[0])).unwrap(), pairs(&base));
            assert_eq!(d.table_size(), 57);
            let mut second = base.to_vec();
            second.push(("cache-control", "no-cache"));
            assert_eq!(fields(&mut d, &hex(blocks[1])).unwrap(), pairs(&second));
            assert_eq!(d.table_size(), 110);
            let third = [
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ];
            assert_eq!(fields(&mut d, &hex(blocks[2])).unwrap(), pairs(&third));
            assert_eq!(
                table(&d),
                pairs(&[
                    ("custom-key", "custom-value"),
                    ("cache-control", "no-cache"),
                    (":authority", "www.example.com"),
                ])
            );
            assert_eq!(d.table_size(), 164);
        }
    }

    /// RFC 7541 C.5 (raw) and C.6 (Huffman): three responses with a 256-octet table, with
    /// evictions.
    #[test]
    fn responses_with_eviction_of_appendix_c5_and_c6() {
        let raw = [
            "4803 3330 3258 0770 7269 7661 7465 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133
             2032 303a 3133 3a32 3120 474d 546e 1768 7474 7073 3a2f 2f77 7777 2e65 7861 6d70
             6c65 2e63 6f6d",
            "4803 3330 37c1 c0bf",
            "88c1 611d 4d6f 6e2c 2032 3120 4f63 7420 3230 3133 2032 303a 3133 3a32 3220 474d
             54c0 5a04 677a 6970 7738 666f 6f3d 4153 444a 4b48 514b 425a 584f 5157 454f 5049
             5541 5851 5745 4f49 553b 206d 6178 2d61 6765 3d33 3630 303b 2076 6572 7369 6f6e
             3d31",
        ];
        let huff = [
            "4882 6402 5885 aec3 771a 4b61 96d0 7abe 9410 54d4 44a8 2005 9504 0b81 66e0 82a6
             2d1b ff6e 919d 29ad 1718 63c7 8f0b 97c8 e9ae 82ae 43d3",
            "4883 640e ffc1 c0bf",
            "88c1 6196 d07a be94 1054 d444 a820 0595 040b 8166 e084 a62d 1bff c05a 839b d9ab
             77ad 94e7 821d d7f2 e6c7 b335 dfdf cd5b 3960 d5af 2708 7f36 72c1 ab27 0fb5 291f
             9587 3160 65c0 03ed 4ee5 b106 3d50 07",
        ];
        let date1 = "Mon, 21 Oct 2013 20:13:21 GMT";
        let date2 = "Mon, 21 Oct 2013 20:13:22 GMT";
        let loc = "https://www.example.com";
        let cookie = "foo=ASDJKHQKBZXOQWEOPIUAXQWEOIU; max-age=3600; version=1";
        for blocks in [raw, huff] {
            let mut d = Decoder::new();
            d.set_limit(256);
            assert_eq!(d.max_size(), 256);
            assert_eq!(
                fields(&mut d, &hex(blocks[0])).unwrap(),
                pairs(&[
                    (":status", "302"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc)
                ])
            );
            assert_eq!(d.table_size(), 222);
            assert_eq!(
                fields(&mut d, &hex(blocks[1])).unwrap(),
                pairs(&[
                    (":status", "307"),
                    ("cache-control", "private"),
                    ("date", date1),
                    ("location", loc)
                ])
            );
            assert_eq!(
                table(&d),
                pairs(&[
                    (":status", "307"),
                    ("location", loc),
                    ("date", date1),
                    ("cache-control", "private")
                ])
            );
            assert_eq!(
                fields(&mut d, &hex(blocks[2])).unwrap(),
                pairs(&[
                    (":status", "200"),
                    ("cache-control", "private"),
                    ("date", date2),
                    ("location", loc),
                    ("content-encoding", "gzip"),
                    ("set-cookie", cookie),
                ])
            );
            assert_eq!(
                table(&d),
                pairs(&[
                    ("set-cookie", cookie),
                    ("content-encoding", "gzip"),
                    ("date", date2)
                ])
            );
            assert_eq!(d.table_size(), 215);
        }
    }

    #[test]
    fn size_updates() {
        let mut d = Decoder::new();
        fields(
            &mut d,
            &hex("400a 6375 7374 6f6d 2d6b 6579 0d63 7573 746f 6d2d 6865 6164 6572"),
        )
        .unwrap();
        assert_eq!(d.table_len(), 1);
        // An update to 0 empties the table; then back to 4096, and one field.
        assert_eq!(
            fields(&mut d, &hex("20 3fe11f 82")).unwrap(),
            pairs(&[(":method", "GET")])
        );
        assert_eq!((d.table_len(), d.max_size()), (0, 4096));
        // After a field: refused.
        assert_eq!(
            fields(&mut d, &hex("82 20")),
            Err(HpackError::SizeUpdateMisplaced)
        );
        // Above the limit set by SETTINGS: refused.
        let mut d = Decoder::new();
        assert_eq!(
            fields(&mut d, &hex("3fe21f")),
            Err(HpackError::SizeUpdateAboveLimit)
        );
        // Allowed by SETTINGS but larger than this decoder keeps.
        d.set_limit(1 << 20);
        assert_eq!(
            fields(&mut d, &hex("3fe1ff3f")),
            Err(HpackError::TableTooLarge)
        );
        // Exactly MAX_TABLE_SIZE is fine.
        let mut d = Decoder::new();
        d.set_limit(MAX_TABLE_SIZE);
        let block = enc_int(0x20, 5, MAX_TABLE_SIZE);
        fields(&mut d, &block).unwrap();
        assert_eq!(d.max_size(), MAX_TABLE_SIZE);
        // Lowering the limit shrinks the table at once.
        d.set_limit(0);
        assert_eq!(d.max_size(), 0);
    }

    #[test]
    fn an_entry_larger_than_the_table_empties_it() {
        let mut d = Decoder::new();
        d.set_limit(64);
        fields(&mut d, &hex("20 3f21")).unwrap(); // size 64
        fields(&mut d, &hex("4001 61 01 62")).unwrap(); // a: b, 34 octets
        assert_eq!(d.table_size(), 34);
        let big = format!("40 01 61 20 {}", "62".repeat(32)); // 65 octets
        fields(&mut d, &hex(&big)).unwrap();
        assert_eq!((d.table_len(), d.table_size()), (0, 0));
    }

    #[test]
    fn indexing_a_name_from_the_table_itself_survives_its_eviction() {
        let mut d = Decoder::new();
        d.set_limit(70);
        fields(&mut d, &hex("20 3f27")).unwrap(); // max 70
        fields(&mut d, &hex("4004 6e616d65 02 7631")).unwrap(); // name: v1 (38)
                                                                // Literal with indexing, name = index 62 (the entry about to be evicted).
        let f = fields(&mut d, &hex("7e 02 7632")).unwrap();
        assert_eq!(f, pairs(&[("name", "v2")]));
        assert_eq!(table(&d), pairs(&[("name", "v2")]));
    }

    #[test]
    fn bad_blocks_are_errors() {
        let mut d = Decoder::new();
        assert_eq!(fields(&mut d, &hex("80")), Err(HpackError::ZeroIndex));
        assert_eq!(fields(&mut d, &hex("be")), Err(HpackError::BadIndex));
        assert_eq!(fields(&mut d, &hex("40 05 61")), Err(HpackError::Truncated));
        assert_eq!(fields(&mut d, &hex("04")), Err(HpackError::Truncated));
        assert_eq!(fields(&mut d, &hex("0f")), Err(HpackError::Truncated));
        assert_eq!(fields(&mut d, &hex("04 81 ff")), Err(HpackError::Huffman));
        // A string longer than MAX_STRING is refused before looking at its bytes.
        assert_eq!(
            fields(&mut d, &hex("04 7f 81 80 04")),
            Err(HpackError::StringTooLong)
        );
    }

    #[test]
    fn decoder_is_small_and_scratch_is_given_back() {
        assert!(
            std::mem::size_of::<Decoder>() <= 128,
            "{}",
            std::mem::size_of::<Decoder>()
        );
        let mut d = Decoder::new();
        let long = vec![b'a'; 20_000];
        let enc = huffman_encode(&long);
        let mut block = vec![0x00, 0x01, b'x'];
        block.extend(enc_int(0x80, 7, enc.len()));
        block.extend(&enc);
        let mut seen = 0;
        d.decode(&block, |_, v| seen = v.len()).unwrap();
        assert_eq!(seen, 20_000);
        assert!(d.heap_bytes() <= SCRATCH_KEEP * 2, "{}", d.heap_bytes());
    }

    // ---- properties ------------------------------------------------------------------------

    use proptest::prelude::*;

    fn check_bounds(d: &Decoder) {
        assert!(d.table_size() <= d.max_size(), "table over its max");
        assert!(d.max_size() <= MAX_TABLE_SIZE, "max over the cap");
        let live: usize = d.table.entries.iter().map(|e| e.size()).sum();
        assert_eq!(live, d.table_size(), "size accounting");
        assert!(d.heap_bytes() <= MAX_TABLE_SIZE * 3 + 2 * SCRATCH_KEEP);
    }

    /// Field representations, valid or not, to reach deep decoder states.
    fn representation() -> impl Strategy<Value = Vec<u8>> {
        let s = prop::collection::vec(any::<u8>(), 0..40);
        prop_oneof![
            (0u8..0x7f).prop_map(|i| vec![0x80 | i]),
            (0u8..0x3f, s.clone(), any::<bool>()).prop_map(|(i, v, h)| {
                let mut out = vec![0x40 | i];
                if i == 0 {
                    out.extend([0x03, b'k', b'e', b'y']);
                }
                let v = if h { huffman_encode(&v) } else { v };
                out.push(if h { 0x80 } else { 0 } | v.len() as u8);
                out.extend(v);
                out
            }),
            (0u8..0x0f, s, any::<bool>()).prop_map(|(i, v, never)| {
                let mut out = vec![if never { 0x10 } else { 0 } | i, v.len() as u8];
                if i == 0 {
                    out.extend(&v);
                    out.push(v.len() as u8);
                }
                out.extend(v);
                out
            }),
            (0usize..5000).prop_map(|n| enc_int(0x20, 5, n)),
            prop::collection::vec(any::<u8>(), 0..8),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn any_block_never_panics(
            blocks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..8),
            limit in prop_oneof![Just(4096usize), 0usize..200_000],
        ) {
            let mut d = Decoder::new();
            d.set_limit(limit);
            for b in &blocks {
                let _ = d.decode(b, |_, _| {});
                check_bounds(&d);
            }
        }

        #[test]
        fn representation_soup_never_panics(
            blocks in prop::collection::vec(prop::collection::vec(representation(), 0..20), 0..10),
            limit in 0usize..100_000,
        ) {
            let mut d = Decoder::new();
            d.set_limit(limit);
            for b in &blocks {
                let _ = d.decode(&b.concat(), |_, _| {});
                check_bounds(&d);
            }
        }

        #[test]
        fn huffman_round_trips(s in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            huffman_decode(&huffman_encode(&s), &mut out).unwrap();
            prop_assert_eq!(out, s);
        }

        #[test]
        fn huffman_never_panics(s in prop::collection::vec(any::<u8>(), 0..300)) {
            let mut out = Vec::new();
            let _ = huffman_decode(&s, &mut out);
            prop_assert!(out.len() <= s.len() * 8 / 5 + 1);
        }

        /// Literals with indexing of random sizes: the table always matches a simple model.
        #[test]
        fn table_matches_a_model(
            entries in prop::collection::vec((0usize..60, 0usize..300), 1..60),
            max in 0usize..2000,
        ) {
            let mut d = Decoder::new();
            d.set_limit(4096);
            let block = enc_int(0x20, 5, max);
            d.decode(&block, |_, _| {}).unwrap();
            let mut model: VecDeque<(Vec<u8>, Vec<u8>)> = VecDeque::new();
            for (i, (nl, vl)) in entries.iter().enumerate() {
                let name = vec![b'a' + (i % 26) as u8; *nl];
                let value = vec![b'0' + (i % 10) as u8; *vl];
                let mut b = vec![0x40];
                for s in [&name, &value] {
                    b.extend(enc_int(0, 7, s.len()));
                    b.extend(s.iter());
                }
                d.decode(&b, |_, _| {}).unwrap();
                let size = |m: &VecDeque<(Vec<u8>, Vec<u8>)>| m.iter().map(|(n, v)| n.len() + v.len() + 32).sum::<usize>();
                if nl + vl + 32 > max {
                    model.clear();
                } else {
                    while size(&model) + nl + vl + 32 > max { model.pop_back(); }
                    model.push_front((name, value));
                }
                check_bounds(&d);
                let got: Vec<(Vec<u8>, Vec<u8>)> = d.table.entries.iter().map(|e| (e.name().to_vec(), e.value().to_vec())).collect();
                prop_assert_eq!(got, model.iter().cloned().collect::<Vec<_>>());
                // And every entry is reachable by its index.
                for (k, (n, v)) in model.iter().enumerate() {
                    let b = enc_int(0x80, 7, 62 + k);
                    let mut got = None;
                    d.decode(&b, |gn, gv| got = Some((gn.to_vec(), gv.to_vec()))).unwrap();
                    prop_assert_eq!(got, Some((n.clone(), v.clone())));
                }
            }
        }
    }
}
