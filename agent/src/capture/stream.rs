//! One direction of a connection as its parser sees it: the kernel sends a call's bytes
//! as segments that say where they sit in the stream; what lies between them (bytes the
//! parser asked the kernel to skip, bytes beyond the per-call copy limit, records lost
//! on the way) reaches the parser as a gap of known length, so it can skip a body by
//! length or resynchronise, but never mistakes one message's bytes for another's.

/// One ring buffer record's worth of a call.
#[derive(Clone, Copy, Debug)]
pub struct Segment<'a> {
    /// Stream offset of the call's first byte.
    pub call_offset: u64,
    /// Bytes the call moved.
    pub call_bytes: u64,
    /// Stream offset of `payload`'s first byte.
    pub payload_offset: u64,
    pub payload: &'a [u8],
    /// The call's last segment: what follows up to the call's end is a gap.
    pub last: bool,
}

impl Segment<'_> {
    fn call_end(&self) -> u64 {
        self.call_offset.saturating_add(self.call_bytes)
    }
}

/// How far a direction's bytes have been fed to the parser, and the bytes of a call whose
/// last segment has not arrived yet.
///
/// Parsers see one call as one piece wherever its bytes were copied contiguously (a call
/// sent as several segments, e.g. one per iovec or per 16 KiB, is put back together): a
/// message that starts a call is a boundary they can resynchronise on, and an HTTP/2
/// server's first SETTINGS must reach detection as the one piece it was written as.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    fed: u64,
    /// The call in progress, once a call has come in pieces. Boxed, and kept for the next
    /// such call: most connections' calls arrive whole, and then a direction is 16 bytes
    /// (with 50,000 connections tracked, the 112 bytes of two inline directions were
    /// 5.3 MiB).
    held: Option<Box<Held>>,
}

/// Copied bytes of a call whose last segment has not arrived yet.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Held {
    /// Copied bytes of the call, from stream offset `fed`.
    pending: Vec<u8>,
    /// The call's offset and end.
    call: (u64, u64),
    /// Whether a call is in progress (`call` is its).
    open: bool,
}

/// Most bytes of one call held while its other segments arrive (the kernel's per-call copy
/// limit is at most this).
const MAX_PENDING: usize = agent_common::MAX_CALL_CAPTURE as usize;

impl Stream {
    /// Stream offset up to which bytes (or gaps) were fed.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Bytes held of the call in progress.
    fn held_len(&self) -> usize {
        self.held.as_ref().map_or(0, |h| h.pending.len())
    }

    /// The offset and end of the call in progress, if one is.
    fn open_call(&self) -> Option<(u64, u64)> {
        self.held.as_ref().filter(|h| h.open).map(|h| h.call)
    }

    /// Feeds a segment to `parse(data, len)`: gaps (`data` empty, `len` bytes) for what was
    /// not copied (skipped at the parser's word, beyond the per-call limit, or lost on the
    /// way), and the copied bytes of each call in one piece once its last segment is in.
    pub fn feed(&mut self, segment: &Segment<'_>, mut parse: impl FnMut(&[u8], usize)) {
        // A record of another call while one is open: that call's last segment was lost.
        if let Some((offset, end)) = self.open_call() {
            if segment.call_offset != offset {
                self.end_call(end, &mut parse);
            }
        }
        let expected = self.fed + self.held_len() as u64;
        if segment.payload_offset > expected {
            self.flush(&mut parse);
            parse(&[], gap(segment.payload_offset - self.fed));
            self.fed = segment.payload_offset;
        }
        // Bytes already fed (a record that overlaps an earlier one) are not fed again.
        let expected = self.fed + self.held_len() as u64;
        let fresh = usize::try_from(expected - segment.payload_offset.min(expected))
            .ok()
            .and_then(|already| segment.payload.get(already..))
            .unwrap_or(&[]);
        if segment.last && self.open_call().is_none() && self.held_len() == 0 {
            // A call in one record: no copy.
            if !fresh.is_empty() {
                parse(fresh, fresh.len());
                self.fed += fresh.len() as u64;
            }
        } else {
            if self.held_len() + fresh.len() > MAX_PENDING {
                self.flush(&mut parse);
            }
            let held = self.held.get_or_insert_with(Box::default);
            held.pending.extend_from_slice(fresh);
            held.open = true;
            held.call = (segment.call_offset, segment.call_end());
        }
        if segment.last {
            self.end_call(segment.call_end(), &mut parse);
        }
    }

    /// Feeds what is held of the call in progress, then a gap to its `end`.
    fn end_call(&mut self, end: u64, parse: &mut impl FnMut(&[u8], usize)) {
        self.flush(parse);
        if end > self.fed {
            parse(&[], gap(end - self.fed));
            self.fed = end;
        }
        if let Some(held) = self.held.as_mut() {
            held.open = false;
        }
    }

    /// Feeds the bytes held, as one piece.
    fn flush(&mut self, parse: &mut impl FnMut(&[u8], usize)) {
        if let Some(held) = self.held.as_mut() {
            if !held.pending.is_empty() {
                parse(&held.pending, held.pending.len());
                self.fed += held.pending.len() as u64;
                held.pending.clear();
            }
        }
    }

    /// Feeds what is held of a call whose last segment never came (the connection closed
    /// or went quiet).
    pub fn finish(&mut self, mut parse: impl FnMut(&[u8], usize)) {
        if let Some((_, end)) = self.open_call() {
            self.end_call(end, &mut parse);
        }
    }

    /// Moves past a segment without parsing it (a connection that is not parsed): what
    /// is held is let go.
    pub fn skip_to(&mut self, segment: &Segment<'_>) {
        self.held = None;
        let end = if segment.last {
            segment.call_end()
        } else {
            segment.payload_offset + segment.payload.len() as u64
        };
        self.fed = self.fed.max(end);
    }
}

fn gap(len: u64) -> usize {
    usize::try_from(len).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stream: &mut Stream, segment: Segment<'_>) -> Vec<(Vec<u8>, usize)> {
        let mut out = Vec::new();
        stream.feed(&segment, |data, len| out.push((data.to_vec(), len)));
        out
    }

    fn seg(
        call_offset: u64,
        call_bytes: u64,
        payload_offset: u64,
        payload: &[u8],
        last: bool,
    ) -> Segment<'_> {
        Segment {
            call_offset,
            call_bytes,
            payload_offset,
            payload,
            last,
        }
    }

    #[test]
    fn whole_calls_pass_through() {
        let mut s = Stream::default();
        assert_eq!(
            run(&mut s, seg(0, 3, 0, b"abc", true)),
            vec![(b"abc".to_vec(), 3)]
        );
        assert_eq!(
            run(&mut s, seg(3, 2, 3, b"de", true)),
            vec![(b"de".to_vec(), 2)]
        );
        assert_eq!(s.fed(), 5);
    }

    #[test]
    fn a_skip_window_and_a_capped_tail_become_gaps() {
        let mut s = Stream::default();
        // A call of 100 bytes: 10 copied, 50 skipped at userspace's word, 20 copied, the
        // last 20 beyond the copy limit.
        assert_eq!(run(&mut s, seg(0, 100, 0, &[1; 10], false)), vec![]);
        assert_eq!(
            run(&mut s, seg(0, 100, 60, &[2; 20], true)),
            vec![
                (vec![1; 10], 10),
                (vec![], 50),
                (vec![2; 20], 20),
                (vec![], 20)
            ]
        );
        assert_eq!(s.fed(), 100);
    }

    #[test]
    fn segments_of_one_call_reach_the_parser_as_one_piece() {
        let mut s = Stream::default();
        // An HTTP/2 SETTINGS frame written as header and payload iovecs.
        let header = [0, 0, 6, 4, 0, 0, 0, 0, 0];
        assert_eq!(run(&mut s, seg(0, 15, 0, &header, false)), vec![]);
        assert_eq!(
            run(&mut s, seg(0, 15, 9, &[0, 3, 0, 0, 0, 100], true)),
            vec![(vec![0, 0, 6, 4, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 100], 15)]
        );
        // A call whose last segment was lost: fed when the next call shows up.
        assert_eq!(run(&mut s, seg(15, 10, 15, b"abcd", false)), vec![]);
        assert_eq!(
            run(&mut s, seg(25, 2, 25, b"xy", true)),
            vec![(b"abcd".to_vec(), 4), (vec![], 6), (b"xy".to_vec(), 2)]
        );
        // Or when the connection ends.
        assert_eq!(run(&mut s, seg(27, 8, 27, b"tail", false)), vec![]);
        let mut out = Vec::new();
        s.finish(|d, l| out.push((d.to_vec(), l)));
        assert_eq!(out, vec![(b"tail".to_vec(), 4), (vec![], 4)]);
        assert_eq!(s.fed(), 35);
    }

    #[test]
    fn lost_records_become_gaps_and_overlaps_are_fed_once() {
        let mut s = Stream::default();
        run(&mut s, seg(0, 10, 0, &[0; 10], true));
        // Calls 10..30 lost entirely; this call starts at 30.
        assert_eq!(
            run(&mut s, seg(30, 5, 30, b"hello", true)),
            vec![(vec![], 20), (b"hello".to_vec(), 5)]
        );
        // A record repeating bytes already fed feeds only what is new.
        assert_eq!(
            run(&mut s, seg(33, 4, 33, b"loXY", true)),
            vec![(b"XY".to_vec(), 2)]
        );
        assert_eq!(s.fed(), 37);
    }

    #[test]
    fn a_call_with_nothing_copied_is_one_gap() {
        let mut s = Stream::default();
        assert_eq!(
            run(&mut s, seg(0, 4096, 4096, b"", true)),
            vec![(vec![], 4096)]
        );
        let mut skipped = Stream::default();
        skipped.skip_to(&seg(0, 4096, 0, b"abc", false));
        assert_eq!(skipped.fed(), 3);
        skipped.skip_to(&seg(0, 4096, 4096, b"", true));
        assert_eq!(skipped.fed(), 4096);
    }
}
