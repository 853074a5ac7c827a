//! Column encoding of kernel records. Every field of [`RawEvent`] gets its own byte column, so
//! each column holds similar values (timestamps next to timestamps, ports next to ports) and
//! zstd compresses them far better than interleaved 128-byte records. The encoding is
//! lossless for every field, padding included: whatever kind of record the kernel writes comes
//! back byte for byte.

use tracer_common::{AF_INET, COMM_LEN, RawEvent};

use super::{
    CorruptPayload,
    varint::{self, Cursor},
};

/// Columns, in the order they are stored.
const COLUMNS: usize = 21;

#[derive(Default)]
pub struct ColumnWriter {
    cols: [Vec<u8>; COLUMNS],
    prev_ts: u64,
    prev_sk: u64,
    count: usize,
}

/// An address column entry: 4 bytes for an IPv4 address (the kernel leaves the other 12
/// zero), else all 16, behind a one-byte length.
fn put_addr(out: &mut Vec<u8>, family: u16, a: &[u8; 16]) {
    if family == AF_INET && a[4..].iter().all(|&b| b == 0) {
        out.push(4);
        out.extend_from_slice(&a[..4]);
    } else {
        out.push(16);
        out.extend_from_slice(a);
    }
}

fn get_addr(c: &mut Cursor<'_>) -> Result<[u8; 16], CorruptPayload> {
    let n = c.u8()?;
    if n != 4 && n != 16 {
        return Err(CorruptPayload("bad address length"));
    }
    let mut a = [0u8; 16];
    a[..usize::from(n)].copy_from_slice(c.bytes(usize::from(n))?);
    Ok(a)
}

impl ColumnWriter {
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Bytes the columns hold so far.
    pub fn encoded_len(&self) -> usize {
        self.cols.iter().map(Vec::len).sum()
    }

    pub fn push(&mut self, e: &RawEvent) {
        let c = &mut self.cols;
        // Records of different CPUs can arrive slightly out of order: deltas are signed.
        varint::put(
            &mut c[0],
            varint::zigzag(e.ts_ns.wrapping_sub(self.prev_ts) as i64),
        );
        varint::put(
            &mut c[1],
            varint::zigzag(e.sk.wrapping_sub(self.prev_sk) as i64),
        );
        self.prev_ts = e.ts_ns;
        self.prev_sk = e.sk;
        varint::put(&mut c[2], e.duration_ns);
        varint::put(&mut c[3], e.bytes_sent);
        varint::put(&mut c[4], e.bytes_received);
        varint::put(&mut c[5], e.lifespan_ns);
        varint::put(&mut c[6], u64::from(e.family));
        put_addr(&mut c[7], e.family, &e.saddr);
        put_addr(&mut c[8], e.family, &e.daddr);
        let comm_len = e.comm.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
        c[9].push(comm_len as u8);
        c[9].extend_from_slice(&e.comm[..comm_len]);
        varint::put(&mut c[10], u64::from(e.pid));
        varint::put(&mut c[11], u64::from(e.netns));
        varint::put(&mut c[12], u64::from(e.sport));
        varint::put(&mut c[13], u64::from(e.dport));
        c[14].push(e.kind);
        c[15].push(e.old_state);
        c[16].push(e.new_state);
        c[17].push(e.owner_src);
        c[18].extend_from_slice(&e._pad);
        varint::put(&mut c[19], varint::zigzag(i64::from(e.err)));
        varint::put(&mut c[20], u64::from(e.retransmits));
        self.count += 1;
    }

    /// Appends the columns (each behind its length) to `out` and resets.
    pub fn finish_into(&mut self, out: &mut Vec<u8>) {
        for col in &mut self.cols {
            varint::put(out, col.len() as u64);
            out.extend_from_slice(col);
            col.clear();
        }
        self.prev_ts = 0;
        self.prev_sk = 0;
        self.count = 0;
    }
}

fn narrow<T: TryFrom<u64>>(v: u64, what: &'static str) -> Result<T, CorruptPayload> {
    T::try_from(v).map_err(|_| CorruptPayload(what))
}

/// Decodes `n` records from columns written by [`ColumnWriter::finish_into`].
pub fn decode(c: &mut Cursor<'_>, n: usize) -> Result<Vec<RawEvent>, CorruptPayload> {
    let mut cols: Vec<Cursor<'_>> = Vec::with_capacity(COLUMNS);
    for _ in 0..COLUMNS {
        cols.push(Cursor::new(c.chunk()?));
    }
    // Every record takes at least one byte of the kind column: bounds the allocation.
    if n > cols[14].remaining() {
        return Err(CorruptPayload("more records than the kind column holds"));
    }
    let mut out = Vec::with_capacity(n);
    let (mut ts, mut sk) = (0u64, 0u64);
    for _ in 0..n {
        let mut e = RawEvent::zeroed();
        ts = ts.wrapping_add(varint::unzigzag(cols[0].varint()?) as u64);
        sk = sk.wrapping_add(varint::unzigzag(cols[1].varint()?) as u64);
        e.ts_ns = ts;
        e.sk = sk;
        e.duration_ns = cols[2].varint()?;
        e.bytes_sent = cols[3].varint()?;
        e.bytes_received = cols[4].varint()?;
        e.lifespan_ns = cols[5].varint()?;
        e.family = narrow(cols[6].varint()?, "family out of range")?;
        e.saddr = get_addr(&mut cols[7])?;
        e.daddr = get_addr(&mut cols[8])?;
        let comm_len = usize::from(cols[9].u8()?);
        if comm_len > COMM_LEN {
            return Err(CorruptPayload("command name too long"));
        }
        e.comm[..comm_len].copy_from_slice(cols[9].bytes(comm_len)?);
        e.pid = narrow(cols[10].varint()?, "pid out of range")?;
        e.netns = narrow(cols[11].varint()?, "netns out of range")?;
        e.sport = narrow(cols[12].varint()?, "port out of range")?;
        e.dport = narrow(cols[13].varint()?, "port out of range")?;
        e.kind = cols[14].u8()?;
        e.old_state = cols[15].u8()?;
        e.new_state = cols[16].u8()?;
        e.owner_src = cols[17].u8()?;
        e._pad.copy_from_slice(cols[18].bytes(2)?);
        e.err = i32::try_from(varint::unzigzag(cols[19].varint()?))
            .map_err(|_| CorruptPayload("err out of range"))?;
        e.retransmits = narrow(cols[20].varint()?, "retransmits out of range")?;
        out.push(e);
    }
    if cols.iter().any(|c| !c.is_empty()) {
        return Err(CorruptPayload("columns longer than their records"));
    }
    Ok(out)
}
