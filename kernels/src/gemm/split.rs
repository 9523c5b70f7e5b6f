//! The split of a GEMM call's register tiles between threads: static
//! (equal-cost runs of tiles, [`linear_rects`]) for small products, dynamic
//! (units claimed from per-thread runs, [`UnitGrid`] and [`Claims`]) for
//! large ones; and the packed-`A` buffer each needs.

use super::{mc_for, ALIGN};
use crate::blocking::{div_ceil, round_up};
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

/// The static split of a call between threads, and the floats of each
/// thread's packed-`A` buffer under it: task `t` of `threads` takes the
/// `t`-th of the runs of equal cost ([`TileCost`]) of the register tiles in
/// row-major (row tile, column panel) order ([`linear_rects`]). The tasks'
/// costs differ by at most about one tile, whatever the shape, and
/// neighbours share at most one row tile, so
/// each row of `A` is packed by at most two tasks while `B` is read (or
/// packed once) for all.
///
/// Measured against the grids it replaced (2 threads, interleaved in one
/// process, `deep` layer shapes): 1.02 (geometric mean) faster than one
/// column group per thread, each packing all of `A`, at minibatch 256; 1.11
/// faster than row groups (four per thread, for rayon to rebalance) at
/// minibatch 100; 1.13 and 1.10 faster at the weight-gradient products
/// `E X^T` (packed `B`) at minibatch 256 and 100; the same at minibatch 1-20
/// and at 1024^3.
///
/// `tiles_m` counts row tiles; `kc` is the block depth the `A` buffers must
/// hold.
pub(super) fn static_a_len(threads: usize, tiles_m: usize, kc: usize, mr: usize) -> usize {
    let tasks = threads.max(1);
    // A task's rectangles span at most ceil(tiles_m / tasks) + 1 row tiles
    // of equal cost (a partial first and last one around whole ones); a
    // cheaper last row tile and the rounding of the cuts (`linear_cut`) may
    // add one, hence + 2.
    let rows = if tasks == 1 {
        tiles_m.max(1)
    } else {
        tiles_m.min(div_ceil(tiles_m, tasks) + 2).max(1)
    } * mr;
    round_up(mc_for(kc).min(rows) * kc, ALIGN / 4)
}

/// A rectangle of register tiles: row tiles `tiles.0 .. tiles.1`, column
/// panels `panels.0 .. panels.1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct TileRect {
    pub(super) tiles: (usize, usize),
    pub(super) panels: (usize, usize),
}

/// The cost of register tiles: `full` for a whole row tile, `last` for the
/// last row tile, three units per vector of `A` per inner step plus one per
/// tile. A partial last tile runs a narrower microkernel: the 10 rows left of
/// m = 250 by 48-row tiles take one vector, 4 units against 10 (measured on
/// 250x500x256, from the two tasks' times: 0.43 of a whole tile).
#[derive(Clone, Copy, Debug)]
pub(super) struct TileCost {
    pub(super) full: usize,
    pub(super) last: usize,
}

impl TileCost {
    /// The cost of the tiles of `m` rows cut into `mr`-row tiles of
    /// `lanes`-wide vectors.
    pub(super) fn new(m: usize, mr: usize, lanes: usize) -> TileCost {
        let rem = m % mr;
        let vectors = if rem == 0 { mr } else { rem }.div_ceil(lanes);
        // Three units per vector and one per tile (the write-back, the
        // broadcasts of B, which a narrow tile amortises over fewer FMAs).
        TileCost {
            full: 3 * (mr / lanes) + 1,
            last: 3 * vectors + 1,
        }
    }
}

/// The first tile (in row-major order over `tiles_m x panels_n` tiles) of
/// part `part` of `parts` runs of equal cost, cut to the nearest tile.
pub(super) fn linear_cut(
    tiles_m: usize,
    panels_n: usize,
    cost: TileCost,
    parts: usize,
    part: usize,
) -> usize {
    let units = tiles_m * panels_n;
    if part >= parts || units == 0 {
        return units;
    }
    let body = (tiles_m - 1) * panels_n * cost.full;
    let total = body + panels_n * cost.last;
    let target = total * part / parts;
    let u = if target <= body {
        (target + cost.full / 2) / cost.full
    } else {
        (tiles_m - 1) * panels_n + (target - body + cost.last / 2) / cost.last
    };
    u.min(units)
}

/// The `part`-th of `parts` runs of equal cost ([`TileCost`]) of the
/// `tiles_m x panels_n` register tiles taken in row-major order, as at most
/// three rectangles: the end of a first row tile, whole row tiles, the start
/// of a last row tile (empty ones left out). Neighbouring parts share at most
/// one row tile, so each row of `A` is packed by at most two tasks, and the
/// parts' costs differ by at most one whole tile's.
pub(super) fn linear_rects(
    tiles_m: usize,
    panels_n: usize,
    cost: TileCost,
    parts: usize,
    part: usize,
) -> impl Iterator<Item = TileRect> {
    let u0 = linear_cut(tiles_m, panels_n, cost, parts, part);
    let u1 = linear_cut(tiles_m, panels_n, cost, parts, part + 1);
    let (i0, j0) = (u0 / panels_n.max(1), u0 % panels_n.max(1));
    let (i1, j1) = (u1 / panels_n.max(1), u1 % panels_n.max(1));
    let rects = if u0 == u1 {
        [None, None, None]
    } else if i0 == i1 {
        [
            Some(TileRect {
                tiles: (i0, i0 + 1),
                panels: (j0, j1),
            }),
            None,
            None,
        ]
    } else {
        let head = (j0 > 0).then_some(TileRect {
            tiles: (i0, i0 + 1),
            panels: (j0, panels_n),
        });
        let body_start = if j0 > 0 { i0 + 1 } else { i0 };
        let body = (body_start < i1).then_some(TileRect {
            tiles: (body_start, i1),
            panels: (0, panels_n),
        });
        let tail = (j1 > 0).then_some(TileRect {
            tiles: (i1, i1 + 1),
            panels: (0, j1),
        });
        [head, body, tail]
    };
    rects.into_iter().flatten()
}

/// Register tiles of at least this many multiply-adds make a unit of work
/// (a unit is one claim; see [`UnitGrid`]).
pub(super) const UNIT_MIN_MACS: usize = 1 << 19;
/// Products share their units dynamically only with at least this many
/// column panels per thread (few-column products keep the static split).
pub(super) const UNITS_PER_THREAD: usize = 8;
/// Products of at least this many multiply-adds (and [`UNITS_PER_THREAD`]
/// column panels per thread) share their work dynamically ([`UnitGrid`],
/// [`Claims`]); smaller ones take the static split ([`static_a_len`]). With
/// the dynamic split for every product, many of the natural-gradient step's
/// products of 1-16 M multiply-adds or of few columns ran 10-30% slower (2
/// threads): their units last a few microseconds, so a row block packed by
/// both threads, a unit more on one thread and the claims' cache-line
/// traffic between the cores weigh.
pub(super) const DYNAMIC_MIN_MACS: usize = 1 << 24;
/// Floats between two claim cells in the scratch (one cache line each, so
/// the threads' claims do not contend for a line).
pub(super) const CELL_STRIDE: usize = ALIGN / 4;

/// How a block of `C` (one [`NC`](super::NC) column block at one
/// [`KC`](super::KC) inner block) is cut into units of work: row blocks of
/// whole register row tiles (balanced, at most [`row_block_cap`] tiles
/// each) by balanced groups of column panels of at least
/// [`UNIT_MIN_MACS`] multiply-adds, numbered in row-major order. A unit's rows of `A` are packed into the buffer of the
/// thread that runs it, unless that buffer already holds them (the unit
/// before it on that thread was in the same row block), so a packed `A` block
/// serves all the panels a thread takes in its row block, as in a
/// single-threaded Goto loop.
///
/// Threads start on equal runs of units (thread `t` of `T` on units
/// `U t / T ..`), take their own from the front and, when theirs are done,
/// the others' from the back ([`Claims`]); a thread that is slowed down
/// (the machine is shared) or starts late loses units to the other instead
/// of making it wait. Stolen units come from the end of a run, so the thief
/// packs only the last row block of its victim.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct UnitGrid {
    pub(super) tiles_m: usize,
    pub(super) row_blocks: usize,
    pub(super) panels_n: usize,
    pub(super) groups: usize,
}

impl UnitGrid {
    /// The grid of a block of `tiles_m` row tiles by `panels_n` column
    /// panels of `mr x nr` tiles at depth `kc`, shared by `tasks` threads.
    pub(super) fn new(
        tasks: usize,
        tiles_m: usize,
        panels_n: usize,
        kc: usize,
        mr: usize,
        nr: usize,
    ) -> Self {
        let cap = row_block_cap(tasks, tiles_m, kc, mr);
        let row_blocks = div_ceil(tiles_m, cap);
        // Balanced groups of at least UNIT_MIN_MACS each (where the panels
        // hold that much).
        let panel_macs = (cap * mr * nr * kc.max(1)).max(1);
        let groups = (panels_n / div_ceil(UNIT_MIN_MACS, panel_macs)).clamp(1, panels_n.max(1));
        UnitGrid {
            tiles_m,
            row_blocks,
            panels_n,
            groups,
        }
    }

    pub(super) fn units(&self) -> usize {
        self.row_blocks * self.groups
    }

    /// Row tiles `(first, end)` of row block `rb` (balanced: sizes differ
    /// by at most one tile).
    pub(super) fn row_tiles(&self, rb: usize) -> (usize, usize) {
        let bound = |r: usize| r * self.tiles_m / self.row_blocks;
        (bound(rb), bound(rb + 1))
    }

    /// Column panels `(first, end)` of column group `g` (balanced).
    pub(super) fn panels(&self, g: usize) -> (usize, usize) {
        let bound = |q: usize| q * self.panels_n / self.groups;
        (bound(g), bound(g + 1))
    }
}

/// The most row tiles in a row block of a [`UnitGrid`]: as many as fit a
/// packed `A` block ([`mc_for`]), and at most a thread's share of the row
/// tiles (so that threads start on different row blocks), hence at most
/// `tiles_m` for `tiles_m >= 1`. Never decreases
/// as `tiles_m` grows (scratch sized for the largest shape serves smaller
/// ones).
pub(super) fn row_block_cap(tasks: usize, tiles_m: usize, kc: usize, mr: usize) -> usize {
    (mc_for(kc) / mr)
        .min(div_ceil(tiles_m, tasks.max(1)))
        .max(1)
}

/// Floats of scratch for the claim cells of `tasks` threads (none for one).
pub(super) fn claims_len(tasks: usize) -> usize {
    if tasks > 1 {
        (tasks + 1) * CELL_STRIDE
    } else {
        0
    }
}

/// The claim cells of one parallel block: per thread, the run of units it
/// has not yet handed out (`front << 32 | end`), and the count of units done,
/// one cache line each.
pub(super) struct Claims<'a> {
    pub(super) cells: &'a [AtomicU64],
    pub(super) tasks: usize,
    pub(super) units: usize,
}

/// u64 per claim cell.
pub(super) const CELL_WORDS: usize = CELL_STRIDE / 2;

impl<'a> Claims<'a> {
    /// Claim cells in `scratch`, thread `t` starting on units
    /// `units t / tasks ..`. The driver guarantees what is asserted: the
    /// scratch holds [`claims_len`]`(tasks)` floats, 64-byte aligned, and
    /// `units` fits the cells' 32-bit halves.
    pub(super) fn new(scratch: &'a mut [MaybeUninit<f32>], tasks: usize, units: usize) -> Self {
        let words = (tasks + 1) * CELL_WORDS;
        let base = scratch.as_mut_ptr() as *mut u64;
        assert!(
            scratch.len() >= 2 * words && base.is_aligned() && u32::try_from(units).is_ok(),
            "gemm: claim cells"
        );
        for w in 0..words {
            let (t, first) = (w / CELL_WORDS, w % CELL_WORDS == 0);
            let value = if first && t < tasks {
                pack_run(units * t / tasks, units * (t + 1) / tasks)
            } else {
                0
            };
            // SAFETY: word w lies in `scratch` (at least 2 words floats,
            // asserted above) and is 8-byte aligned (asserted).
            unsafe { base.add(w).write(value) };
        }
        // SAFETY: `words` initialised, aligned u64 (AtomicU64 has the size
        // and alignment of u64), borrowed exclusively from `scratch` for 'a
        // and from now on only accessed atomically.
        let cells = unsafe { std::slice::from_raw_parts(base as *const AtomicU64, words) };
        Claims {
            cells,
            tasks,
            units,
        }
    }

    pub(super) fn run(&self, t: usize) -> &AtomicU64 {
        &self.cells[t * CELL_WORDS]
    }

    pub(super) fn done(&self) -> &AtomicU64 {
        &self.cells[self.tasks * CELL_WORDS]
    }

    /// The next unit of thread `t`'s own run, from its front.
    pub(super) fn take_own(&self, t: usize) -> Option<usize> {
        let cell = self.run(t);
        let mut v = cell.load(Ordering::Relaxed);
        loop {
            let (front, end) = unpack_run(v);
            if front >= end {
                return None;
            }
            match cell.compare_exchange_weak(
                v,
                pack_run(front + 1, end),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return Some(front),
                Err(now) => v = now,
            }
        }
    }

    /// A unit from the back of the longest run left of another thread.
    pub(super) fn steal(&self, t: usize) -> Option<usize> {
        loop {
            let mut victim = None;
            let mut most = 0;
            for u in (0..self.tasks).filter(|&u| u != t) {
                let v = self.run(u).load(Ordering::Relaxed);
                let (front, end) = unpack_run(v);
                if end > front && end - front > most {
                    (most, victim) = (end - front, Some((u, v)));
                }
            }
            let (u, v) = victim?;
            let (front, end) = unpack_run(v);
            if self
                .run(u)
                .compare_exchange(
                    v,
                    pack_run(front, end - 1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                )
                .is_ok()
            {
                return Some(end - 1);
            }
        }
    }

    /// Records `count` units done by the caller, then waits until every
    /// unit is done. Only units already claimed can be outstanding, and
    /// those are running on other threads, so the wait is short: it spins,
    /// yielding now and then in case those threads share this one's core.
    /// (Under the static split the waiting thread is rayon's, which sleeps
    /// after a few dozen microseconds: timestamps taken in each thread showed
    /// 33-35 us between the last thread's end and the call's return in the
    /// median call at two of the six large `deep` shapes. Against returning
    /// at once and leaving the wait to rayon, the spin measured within 0.5%
    /// in back-to-back calls.)
    pub(super) fn finish(&self, count: usize) {
        let done = self.done();
        done.fetch_add(count as u64, Ordering::AcqRel);
        let mut spins = 0u32;
        while (done.load(Ordering::Acquire) as usize) < self.units {
            std::hint::spin_loop();
            spins = spins.wrapping_add(1);
            if spins.is_multiple_of(64) {
                std::thread::yield_now();
            }
        }
    }
}

pub(super) fn pack_run(front: usize, end: usize) -> u64 {
    (front as u64) << 32 | end as u64
}

pub(super) fn unpack_run(v: u64) -> (usize, usize) {
    ((v >> 32) as usize, (v & 0xffff_ffff) as usize)
}
