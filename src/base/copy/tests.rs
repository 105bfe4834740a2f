//! The copies against element-by-element oracles.

use super::*;

/// Element-by-element oracle for one destination.
fn naive(src: &[u8], have: &Region, want: &Region, size: usize, out: &mut [u8]) {
    if let Some(inter) = have.intersect(want) {
        for_each_run(have, want, &inter, |r| {
            let (s, d, n) = (
                r.src as usize * size,
                r.dst as usize * size,
                r.len as usize * size,
            );
            out[d..d + n].copy_from_slice(&src[s..s + n]);
        });
    }
}

/// `f` as it runs in a load, or [`serially`](crate::base::par::serially), as it runs while
/// a read on object storage holds its permits: the same bytes either way.
fn ways<R>(serial: bool, f: impl FnOnce() -> R) -> R {
    if serial {
        crate::base::par::serially(f)
    } else {
        f()
    }
}

#[test]
fn a_whole_copy_and_a_checksum_are_the_same_serially() {
    let src: Vec<u8> = (0..(3 * BAND + 12345))
        .map(|i| (i * 29 % 251) as u8)
        .collect();
    for serial in [false, true] {
        let mut dst = vec![0u8; src.len()];
        let crc = ways(serial, || copy_whole(&src, &mut dst));
        assert_eq!(crc, crc32c::crc32c(&src), "serial {serial}");
        assert!(dst == src, "serial {serial}");
        assert_eq!(ways(serial, || crc::crc32c(&src)), crc);
    }
}

#[test]
fn bands_match_the_oracle() {
    for serial in [false, true] {
        // A stored slice of rows [100, 100+3000) x 700 columns of u32, copied into boxes that cut it
        // along both axes, with bands of several rows and steps of a few rows.
        let have = Region::new(vec![(100u64, 3000u64), (0, 700)]);
        let size = 4;
        let src: Vec<u8> = (0..3000 * 700 * size)
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let wants: Vec<Region> = vec![
            Region::new(vec![(0, 1000), (0, 700)]),
            Region::new(vec![(1000, 2500), (0, 300)]),
            Region::new(vec![(1000, 2500), (300, 400)]),
            Region::new(vec![(100, 3000), (0, 700)]),
            Region::new(vec![(50, 20), (0, 700)]), // no overlap
        ];
        let mut bufs: Vec<Vec<u8>> = wants
            .iter()
            .map(|w| vec![0u8; w.num_elements().unwrap() as usize * size])
            .collect();
        let dsts = bufs
            .iter_mut()
            .zip(&wants)
            .map(|(b, w)| Dst {
                buf: b,
                want: w,
                held: Held::AsStored,
            })
            .collect();
        let crc = ways(serial, || copy_verify(&src, &have, size, dsts));
        assert_eq!(crc, crc32c::crc32c(&src));
        for (b, w) in bufs.iter().zip(&wants) {
            let mut want_buf = vec![0u8; b.len()];
            naive(&src, &have, w, size, &mut want_buf);
            assert!(*b == want_buf, "box {w:?} serial {serial}");
        }
    }
    // A scalar and an empty tensor.
    let mut one = [0u8; 4];
    assert_eq!(
        copy_verify(
            &[1, 2, 3, 4],
            &Region::default(),
            4,
            vec![Dst {
                buf: &mut one,
                want: &Region::default(),
                held: Held::AsStored,
            }]
        ),
        crc32c::crc32c(&[1, 2, 3, 4])
    );
    assert_eq!(one, [1, 2, 3, 4]);
    assert_eq!(
        copy_verify(&[], &Region::new(vec![(0, 0), (0, 3)]), 4, vec![]),
        0
    );
}

/// Each box of `bands_match_the_oracle`'s kind as the only destination (the path a single
/// destination takes depends on its box), for a source at row 0 and one further down, and
/// boxes without columns.
#[test]
fn a_single_destination_gets_its_box_whatever_the_box() {
    let size = 4;
    for first in [0u64, 100] {
        let have = Region::new(vec![(first, 3000), (0, 700)]);
        let src: Vec<u8> = (0..3000 * 700 * size)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        for want in [
            have.clone(),
            Region::new(vec![(first, 1000), (0, 700)]),
            Region::new(vec![(first + 500, 2500), (100, 300)]),
            Region::new(vec![(0, first + 3000), (0, 700)]),
        ] {
            let mut got = vec![0u8; want.num_elements().unwrap() as usize * size];
            let dst = Dst {
                buf: &mut got,
                want: &want,
                held: Held::AsStored,
            };
            let crc = copy_verify(&src, &have, size, vec![dst]);
            assert_eq!(crc, crc32c::crc32c(&src));
            let mut expect = vec![0u8; got.len()];
            naive(&src, &have, &want, size, &mut expect);
            assert!(got == expect, "rows from {first}: box {want:?}");
        }
    }
    // Rows without columns: nothing to copy, the checksum of nothing.
    let none = Region::new(vec![(0, 5), (0, 0)]);
    assert_eq!(copy_verify(&[], &none, 4, vec![]), 0);
}

#[test]
fn transposed_destinations_match_the_oracle() {
    // Boxes of a 300 x 70 source of 2-, 4- and 8-byte elements, some held transposed, with
    // runs that span several rows (whole-width boxes) and runs cut by the box.
    for size in [1usize, 2, 4, 8] {
        let have = Region::new(vec![(10u64, 300u64), (0, 70)]);
        let src: Vec<u8> = (0..300 * 70 * size).map(|i| (i * 7 % 253) as u8).collect();
        let wants = [
            (Region::new(vec![(10, 300), (0, 70)]), true),
            (Region::new(vec![(0, 100), (0, 70)]), true),
            (Region::new(vec![(200, 200), (5, 60)]), true),
            (Region::new(vec![(20, 30), (0, 70)]), false),
        ];
        let mut bufs: Vec<Vec<u8>> = wants
            .iter()
            .map(|(w, _)| vec![0u8; w.num_elements().unwrap() as usize * size])
            .collect();
        let dsts = bufs
            .iter_mut()
            .zip(&wants)
            .map(|(buf, (want, transposed))| Dst {
                buf,
                want,
                held: match transposed {
                    true => Held::Transposed,
                    false => Held::AsStored,
                },
            })
            .collect();
        assert_eq!(copy_verify(&src, &have, size, dsts), crc32c::crc32c(&src));
        for (b, (w, transposed)) in bufs.iter().zip(&wants) {
            let mut plain = vec![0u8; b.len()];
            naive(&src, &have, w, size, &mut plain);
            let [(_, rows), (_, cols)] = w.dims() else {
                unreachable!()
            };
            let (rows, cols) = (*rows as usize, *cols as usize);
            let mut want_buf = plain.clone();
            if *transposed {
                for r in 0..rows {
                    for c in 0..cols {
                        let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                        want_buf[to..to + size].copy_from_slice(&plain[from..from + size]);
                    }
                }
            }
            assert!(
                *b == want_buf,
                "size {size} box {w:?} transposed {transposed}"
            );
        }
    }
}

#[test]
fn gathered_columns_equal_element_by_element_at_every_tile_edge() {
    // Blocks of source rows and ranges of columns that cut the 16-byte tiles everywhere (fewer
    // rows or columns than a tile, one more, a few tiles and a part), at column offsets that
    // leave the tiles unaligned: every element where it belongs, nothing else written.
    for size in [1usize, 2, 4, 8, 3] {
        for (rows, cols) in [
            (1usize, 1usize),
            (7, 9),
            (8, 8),
            (9, 17),
            (33, 35),
            (64, 20),
        ] {
            let row_bytes = cols * size;
            let src: Vec<u8> = (0..rows * row_bytes)
                .map(|i| (i * 29 % 251) as u8)
                .collect();
            for (first, n) in [(0, rows), (rows / 3, rows - rows / 3), (rows - 1, 1)] {
                for (c0, width) in [(0, cols), (1, cols - 1), (cols / 2, cols - cols / 2)] {
                    if width == 0 {
                        continue;
                    }
                    let block = &src[first * row_bytes..(first + n) * row_bytes];
                    let mut out = vec![0xAAu8; width * rows * size];
                    gather(block, first, row_bytes, c0, rows, size, &mut out);
                    for c in 0..width {
                        for r in 0..rows {
                            let at = (c * rows + r) * size;
                            let got = &out[at..at + size];
                            if (first..first + n).contains(&r) {
                                let from = r * row_bytes + (c0 + c) * size;
                                assert_eq!(
                                    got,
                                    &src[from..from + size],
                                    "size {size}, {rows} x {cols}, rows {first}+{n}, \
                                     columns {c0}+{width}: ({r}, {c})"
                                );
                            } else {
                                assert!(got.iter().all(|&b| b == 0xAA), "({r}, {c}) written");
                            }
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn converted_transposes_equal_a_conversion_then_a_transpose() {
    // Block by block through a small buffer: the same bytes as converting the whole value and
    // holding it transposed (the oracle), for widening and narrowing casts, one row, one column,
    // blocks that end mid-matrix (1,000 rows of 3 float32 are several blocks), and kernels of
    // more axes (held transposed and as depthwise kernels; a 2-D value is held transposed either
    // way).
    use crate::load::cast::convert;
    use crate::DType::{BF16, F16, F32};
    for (from, to) in [(BF16, F32), (F16, F32), (F32, BF16), (F32, F16)] {
        let (fs, ts) = (from.size().unwrap(), to.size().unwrap());
        for shape in [
            vec![1u64, 1],
            vec![1, 40],
            vec![40, 1],
            vec![37, 29],
            vec![1000, 3],
            vec![3, 1000],
            vec![3, 3, 7, 5],
            vec![2, 400, 3],
            vec![1, 1, 1],
        ] {
            let n = shape.iter().product::<u64>() as usize;
            let src: Vec<u8> = (0..n * fs).map(|i| (i * 31 % 253) as u8).collect();
            let mut converted = vec![0u8; n * ts];
            convert(from, to, &src, &mut converted);
            for held in [Held::Transposed, Held::Depthwise] {
                let want = oracle(held, &converted, &shape, ts);
                let (rows, mid, _) = held.dims(&shape).unwrap();
                let mut got = vec![0xAAu8; want.len()];
                let convert = |s: &[u8], d: &mut [u8]| convert(from, to, s, d);
                transpose_converted(&src, rows, mid, ts, &mut got, convert, "t").unwrap();
                assert!(got == want, "{from} to {to}, {shape:?} {held:?}");
            }
        }
    }
}

#[test]
fn a_piece_lands_where_its_box_meets_a_transposed_box() {
    // A stored piece of a 50 x 70 tensor (rows 10..40, columns 30..70, as a slice of a
    // variable partitioned along both axes) into boxes held transposed that start before it,
    // inside it and past it on either axis: each element of the meeting at its place in the
    // transposed box, nothing else written.
    for size in [1usize, 2, 4, 8] {
        let el = |r: u64, c: u64| -> Vec<u8> {
            (0..size as u64)
                .map(|k| ((r * 70 + c) * 8 + k) as u8 ^ (r as u8))
                .collect()
        };
        let have = Region::new(vec![(10, 30), (30, 40)]);
        let src: Vec<u8> = (10..40)
            .flat_map(|r| (30..70).flat_map(move |c| el(r, c)))
            .collect();
        for want in [
            Region::new(vec![(0, 50), (0, 70)]),
            Region::new(vec![(15, 20), (20, 30)]),
            Region::new(vec![(0, 50), (35, 35)]),
            Region::new(vec![(12, 3), (31, 9)]),
        ] {
            let [(wr0, wrn), (wc0, wcn)] = *want.dims() else {
                unreachable!()
            };
            let mut got = vec![0xAAu8; (wrn * wcn) as usize * size];
            copy_box(&src, &have, &have, size, &mut got, &want, Held::Transposed);
            for r in wr0..wr0 + wrn {
                for c in wc0..wc0 + wcn {
                    let at = (((c - wc0) * wrn + (r - wr0)) as usize) * size;
                    let inside = (10..40).contains(&r) && (30..70).contains(&c);
                    let want_el = if inside { el(r, c) } else { vec![0xAA; size] };
                    assert_eq!(
                        got[at..at + size],
                        want_el,
                        "size {size}, {want:?}: ({r}, {c})"
                    );
                }
            }
        }
    }
}

#[test]
fn a_large_matrix_is_transposed_in_parallel_bands() {
    // Over BAND bytes: the parallel path, for 4- and 2-byte elements (and serially, the
    // steps of the transposed path).
    for (rows, cols, size, serial) in [
        (1100usize, 1003usize, 4usize, false),
        (777, 3001, 2, false),
        (1100, 1003, 4, true),
    ] {
        let src: Vec<u8> = (0..rows * cols * size)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        let have = Region::whole(&[rows as u64, cols as u64]);
        let mut got = vec![0u8; src.len()];
        let dsts = vec![Dst {
            buf: &mut got,
            want: &have,
            held: Held::Transposed,
        }];
        let crc = ways(serial, || copy_verify(&src, &have, size, dsts));
        assert_eq!(crc, crc32c::crc32c(&src));
        for r in 0..rows {
            for c in 0..cols {
                let (from, to) = ((r * cols + c) * size, (c * rows + r) * size);
                assert_eq!(
                    got[to..to + size],
                    src[from..from + size],
                    "({r}, {c}) serial {serial}"
                );
            }
        }
        let mut whole = vec![0u8; src.len()];
        transpose_whole(&src, rows, 1, size, &mut whole);
        assert!(whole == got, "transpose_whole {rows} x {cols}");
        // A box of it, transposed, as the only destination (not the whole-matrix path).
        let want = Region::new(vec![(1, rows as u64 - 2), (3, cols as u64 - 5)]);
        let (wr, wc) = (rows - 2, cols - 5);
        let mut part = vec![0u8; wr * wc * size];
        let dst = Dst {
            buf: &mut part,
            want: &want,
            held: Held::Transposed,
        };
        assert_eq!(
            ways(serial, || copy_verify(&src, &have, size, vec![dst])),
            crc
        );
        for r in 0..wr {
            for c in 0..wc {
                let (from, to) = (((r + 1) * cols + c + 3) * size, (c * wr + r) * size);
                assert_eq!(
                    part[to..to + size],
                    src[from..from + size],
                    "box ({r}, {c})"
                );
            }
        }
    }
}

#[test]
fn equals_a_plain_copy_at_every_alignment_and_length() {
    let src: Vec<u8> = (0..5000u32).map(|i| (i * 31 % 251) as u8).collect();
    let mut buf = vec![0u8; 5100];
    for off in [0usize, 1, 31, 32, 33, 64] {
        for len in [0usize, 1, 31, 32, 33, 4096, 4999 - off] {
            buf.fill(0xAA);
            stream_copy(&mut buf[off..off + len], &src[..len]);
            assert_eq!(&buf[off..off + len], &src[..len], "off {off} len {len}");
            assert!(buf[..off].iter().all(|&b| b == 0xAA));
            assert!(buf[off + len..].iter().all(|&b| b == 0xAA));
        }
    }
}

/// `plain` (a box of TensorFlow shape `shape`, row-major) with the element of each index tuple
/// `idx` at index tuple `to(idx)` of a buffer of shape `held`.
fn by_tuples(
    plain: &[u8],
    shape: &[u64],
    size: usize,
    held: &[u64],
    to: impl Fn(&[u64]) -> Vec<u64>,
) -> Vec<u8> {
    let n = shape.len();
    let mut out = vec![0u8; plain.len()];
    let mut idx = vec![0u64; n];
    for e in 0..shape.iter().product::<u64>() {
        let mut rest = e;
        for d in (0..n).rev() {
            idx[d] = rest % shape[d];
            rest /= shape[d];
        }
        let at = to(&idx).iter().zip(held).fold(0, |acc, (i, d)| acc * d + i) as usize;
        let e = e as usize;
        out[at * size..(at + 1) * size].copy_from_slice(&plain[e * size..(e + 1) * size]);
    }
    out
}

/// `plain` held transposed: TensorFlow's `(spatial..., in, out)` at candle's `(out, in,
/// spatial...)`.
fn held_oracle(plain: &[u8], shape: &[u64], size: usize) -> Vec<u8> {
    let n = shape.len();
    let held: Vec<u64> = [&[shape[n - 1], shape[n - 2]][..], &shape[..n - 2]].concat();
    by_tuples(plain, shape, size, &held, |idx| {
        [&[idx[n - 1], idx[n - 2]][..], &idx[..n - 2]].concat()
    })
}

/// `plain` held as a depthwise kernel: TensorFlow's `(spatial..., i, k)` of `[spatial..., in,
/// mult]` at candle's `(i * mult + k, 0, spatial...)` of its grouped convolution weight `[in *
/// mult, 1, spatial...]`.
fn depthwise_oracle(plain: &[u8], shape: &[u64], size: usize) -> Vec<u8> {
    let n = shape.len();
    let held: Vec<u64> = [&[shape[n - 2] * shape[n - 1], 1][..], &shape[..n - 2]].concat();
    by_tuples(plain, shape, size, &held, |idx| {
        [
            &[idx[n - 2] * shape[n - 1] + idx[n - 1], 0][..],
            &idx[..n - 2],
        ]
        .concat()
    })
}

/// `plain` as `held` holds it (a depthwise kernel has 3 or more axes: a 2-D value is held
/// transposed).
fn oracle(held: Held, plain: &[u8], shape: &[u64], size: usize) -> Vec<u8> {
    match held {
        Held::AsStored => plain.to_vec(),
        Held::Depthwise if shape.len() > 2 => depthwise_oracle(plain, shape, size),
        Held::Transposed | Held::Depthwise => held_oracle(plain, shape, size),
    }
}

#[test]
fn kernels_of_more_axes_are_held_as_candle_holds_them() {
    // Convolution kernels (TensorFlow `[spatial..., in, out]`) into buffers held as candle's
    // `[out, in, spatial...]`, and depthwise ones (`[spatial..., in, mult]`) as its grouped
    // `[in * mult, 1, spatial...]`: whole (one step, several steps, and over BAND the parallel
    // bands, serially too) and through `transpose_whole` (converted:
    // `converted_transposes_equal_...`).
    for (shape, size) in [
        (vec![2u64, 5, 3], 4usize),
        (vec![3, 2, 2, 4], 4),
        (vec![3, 3, 7, 5], 2),
        (vec![1, 1, 9, 6], 8),
        (vec![2, 3, 2, 3, 2], 1),
        (vec![3, 3, 64, 48], 4),
        (vec![3, 3, 32, 1], 4),      // a depthwise kernel of multiplier 1
        (vec![3, 3, 256, 520], 4),   // over BAND: the parallel path
        (vec![2000, 3, 5], 4),       // rows of 60 bytes: two steps of rows
        (vec![3, 1, 2], 4),          // one input channel: a plain transpose of [3, 2]
        (vec![1, 1, 1024, 1100], 4), // 1 x 1 over BAND: the parallel bands of the 2-D transpose
        (vec![2, 0, 3, 4], 4),       // no elements
    ] {
        let n: u64 = shape.iter().product();
        let src: Vec<u8> = (0..n as usize * size)
            .map(|i| (i * 37 % 251) as u8)
            .collect();
        let have = Region::whole(&shape);
        for held in [Held::Transposed, Held::Depthwise] {
            let want = oracle(held, &src, &shape, size);
            for serial in [false, true] {
                let mut got = vec![0xAAu8; src.len()];
                let dsts = vec![Dst {
                    buf: &mut got,
                    want: &have,
                    held,
                }];
                let crc = ways(serial, || copy_verify(&src, &have, size, dsts));
                assert_eq!(crc, crc32c::crc32c(&src), "{shape:?}");
                assert!(
                    got == want,
                    "{shape:?} {held:?} size {size} serial {serial}"
                );
            }
            let (rows, mid, _) = held.dims(&shape).unwrap();
            let mut whole = vec![0xAAu8; src.len()];
            transpose_whole(&src, rows, mid, size, &mut whole);
            assert!(whole == want, "transpose_whole {shape:?} {held:?}");
        }
        let n = shape.len();
        let held = [&[shape[n - 1], shape[n - 2]][..], &shape[..n - 2]].concat();
        assert_eq!(held_shape(&shape), held);
        assert_eq!(Held::Transposed.shape(&shape), held);
        let grouped = [&[shape[n - 2] * shape[n - 1], 1][..], &shape[..n - 2]].concat();
        assert_eq!(Held::Depthwise.shape(&shape), grouped);
    }
}

#[test]
fn a_piece_of_a_kernel_lands_where_its_box_meets_a_held_box() {
    // Pieces of a 4 x 3 x 5 x 6 kernel (a variable partitioned along its axes) into boxes held
    // transposed or as depthwise kernels: each element of the meeting at its place, nothing else
    // written. Random boxes against the oracle of the naive row-major copy, held.
    let shape = [4u64, 3, 5, 6];
    let mut rnd = crate::base::xorshift(7);
    for (size, held) in [1usize, 2, 4, 8]
        .into_iter()
        .flat_map(|size| [Held::Transposed, Held::Depthwise].map(|held| (size, held)))
    {
        for _ in 0..200 {
            let mut boxes = [(); 2].map(|_| Region::random(&mut rnd, &shape));
            match rnd(4) {
                0 => boxes[1] = boxes[0].clone(), // the whole piece, in steps of rows
                // Whole rows of both (a part along axis 0, a range fetched from object
                // storage), starting elsewhere on axis 0.
                1 => {
                    let mut dims = boxes[0].dims().to_vec();
                    dims[0] = boxes[1].dims()[0];
                    boxes[1] = Region::new(dims);
                }
                _ => {}
            }
            let [have, want] = boxes;
            let count = |r: &Region| r.num_elements().unwrap() as usize;
            let src: Vec<u8> = (0..count(&have) * size)
                .map(|i| (i * 13 % 251) as u8)
                .collect();
            let mut plain = vec![0xAAu8; count(&want) * size];
            naive(&src, &have, &want, size, &mut plain);
            let expected = oracle(held, &plain, &want.shape(), size);
            let mut got = vec![0xAAu8; expected.len()];
            let rows = have.dims()[0].1;
            // In steps of one row of axis 0, as a load walks a piece.
            for r in 0..rows {
                let part = have.with_rows(have.dims()[0].0 + r, 1);
                copy_box(&src, &have, &part, size, &mut got, &want, held);
            }
            assert!(
                got == expected,
                "{held:?} size {size}: {have:?} into {want:?}"
            );
            let mut once = vec![0xAAu8; expected.len()];
            let dsts = vec![Dst {
                buf: &mut once,
                want: &want,
                held,
            }];
            assert_eq!(copy_verify(&src, &have, size, dsts), crc32c::crc32c(&src));
            assert!(
                once == expected,
                "copy_verify, {held:?} size {size}: {have:?} into {want:?}"
            );
        }
    }
}
