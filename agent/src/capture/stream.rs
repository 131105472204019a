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

/// How far a direction's bytes have been fed to the parser.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    fed: u64,
}

impl Stream {
    /// Stream offset up to which bytes (or gaps) were fed.
    pub fn fed(&self) -> u64 {
        self.fed
    }

    /// Feeds a segment to `parse(data, len)` as consecutive pieces: a gap (`data` empty,
    /// `len` bytes) up to the segment, the segment's bytes not fed before, and after a
    /// call's last segment a gap up to the call's end.
    pub fn feed(&mut self, segment: &Segment<'_>, mut parse: impl FnMut(&[u8], usize)) {
        if segment.payload_offset > self.fed {
            parse(&[], gap(segment.payload_offset - self.fed));
            self.fed = segment.payload_offset;
        }
        // Bytes already fed (a record that overlaps an earlier one) are not fed again.
        let already = self.fed - segment.payload_offset;
        if let Some(fresh) = usize::try_from(already)
            .ok()
            .and_then(|a| segment.payload.get(a..))
            .filter(|f| !f.is_empty())
        {
            parse(fresh, fresh.len());
            self.fed += fresh.len() as u64;
        }
        if segment.last && segment.call_end() > self.fed {
            parse(&[], gap(segment.call_end() - self.fed));
            self.fed = segment.call_end();
        }
    }

    /// Moves past a segment without parsing it (a connection that is not parsed).
    pub fn skip_to(&mut self, segment: &Segment<'_>) {
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
        assert_eq!(
            run(&mut s, seg(0, 100, 0, &[1; 10], false)),
            vec![(vec![1; 10], 10)]
        );
        assert_eq!(
            run(&mut s, seg(0, 100, 60, &[2; 20], true)),
            vec![(vec![], 50), (vec![2; 20], 20), (vec![], 20)]
        );
        assert_eq!(s.fed(), 100);
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
