//! OFT's fused kernels on wgpu against the burn-ops reference path (run on the CPU backend with
//! autodiff): the block rotation (forward, dx, dR; shared and per-block rotations) and the
//! Cayley-Neumann build (R and d/dv), on odd shapes, to 1e-5 relative.

use crate::common::{block, device};
use crate::kernels::{rel_err, upload, values};
use burn::tensor::{Device, Tensor};
use wgtune::adapters::oft::{cayley_neumann, rotate_reference, skew};
use wgtune::kernels::block_rotate::{OftKernelError, block_rotate};
use wgtune::kernels::cayley;
use wgtune::model::read_f32;

fn read<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    block(read_f32(t)).unwrap()
}

fn assert_close(what: &str, got: &[f32], want: &[f32]) {
    let e = rel_err(got, want);
    assert!(e < 1e-5, "{what}: rel err {e}");
}

/// `(y, dx, dR)` of `loss = Σ y ⊙ g`, `y = x · blockdiag(R)`, by the kernel or the reference.
fn rotate_and_grads(
    device: &Device,
    fused: bool,
    [x, r, g]: [&[f32]; 3],
    [m, width]: [usize; 2],
    r_dims: [usize; 3],
) -> [Vec<f32>; 3] {
    let xt = upload(x.to_vec(), [m, width], device).require_grad();
    let rt = upload(r.to_vec(), r_dims, device).require_grad();
    let y = if fused {
        block_rotate(xt.clone(), rt.clone()).unwrap()
    } else {
        rotate_reference(xt.clone(), rt.clone())
    };
    let grads = (y.clone() * upload(g.to_vec(), [m, width], device))
        .sum()
        .backward();
    [
        read(y),
        read(xt.grad(&grads).unwrap()),
        read(rt.grad(&grads).unwrap()),
    ]
}

#[test]
fn fused_block_rotation_equals_burn_ops() {
    let gpu = device("wgpu").autodiff();
    let cpu = device("cpu").autodiff();
    // (M, b, nb, shared): M below, across and above the row tile (4096 / tile: 256, 128, 64);
    // b of each column tile, one not a power of two, one above 64 (two column tiles, four dR
    // tiles); weight-gradient reductions of one and of two splits (256 entries each).
    let cases = [
        (37, 16, 3, false),
        (300, 16, 3, false),
        (70, 32, 5, true),
        (131, 24, 1, false),
        (9, 64, 3, false),
        (33, 64, 3, true),
        (5, 80, 2, true),
    ];
    for (i, (m, b, nb, shared)) in cases.into_iter().enumerate() {
        let width = nb * b;
        let r_dims = [if shared { 1 } else { nb }, b, b];
        let seed = 100 + 3 * i as u32;
        let x = values(m * width, seed);
        let r = values(r_dims.iter().product(), seed + 1);
        let g = values(m * width, seed + 2);
        let data = [x.as_slice(), &r, &g];
        let want = rotate_and_grads(&cpu, false, data, [m, width], r_dims);
        let got = rotate_and_grads(&gpu, true, data, [m, width], r_dims);
        for (name, (got, want)) in ["y", "dx", "dR"].iter().zip(got.iter().zip(&want)) {
            assert_close(
                &format!("{name} M={m} b={b} nb={nb} shared={shared}"),
                got,
                want,
            );
        }
    }
}

/// `(R, dv)` of `loss = Σ R ⊙ g` for skew vectors `v`, by the kernel or the reference.
fn cayley_and_grad(
    device: &Device,
    fused: bool,
    v: &[f32],
    g: &[f32],
    rows: usize,
    b: usize,
    terms: usize,
) -> [Vec<f32>; 2] {
    let vt = upload(v.to_vec(), [rows, b * (b - 1) / 2], device).require_grad();
    let r = if fused {
        cayley::cayley_neumann(vt.clone(), b, terms).unwrap()
    } else {
        cayley_neumann(skew(vt.clone(), b), terms)
    };
    // `+ 0·Σv` keeps the loss tracked where R does not depend on v (terms ≤ 1: R = I).
    let loss = (r.clone() * upload(g.to_vec(), [rows, b, b], device)).sum()
        + vt.clone().sum().mul_scalar(0.0);
    let grads = loss.backward();
    [read(r), read(vt.grad(&grads).unwrap())]
}

#[test]
fn fused_cayley_neumann_equals_burn_ops() {
    let gpu = device("wgpu").autodiff();
    let cpu = device("cpu").autodiff();
    // (b, rows, terms): every branch of peft's term semantics (1: I, 2: I + 2Q, 3 = 4, 5, 7),
    // b with one element per invocation, several, a remainder (24² = 2.25 · 256), and the 64 limit.
    let cases = [
        (16, 3, 5),
        (32, 1, 3),
        (64, 2, 5),
        (24, 3, 2),
        (8, 2, 1),
        (32, 2, 7),
        (2, 5, 4),
    ];
    for (i, (b, rows, terms)) in cases.into_iter().enumerate() {
        let seed = 200 + 2 * i as u32;
        // Skew entries of peft's trained scale (|Q| well inside the series' radius).
        let v: Vec<f32> = values(rows * b * (b - 1) / 2, seed)
            .iter()
            .map(|x| x * 0.05)
            .collect();
        let g = values(rows * b * b, seed + 1);
        let want = cayley_and_grad(&cpu, false, &v, &g, rows, b, terms);
        let got = cayley_and_grad(&gpu, true, &v, &g, rows, b, terms);
        assert_close(
            &format!("R b={b} rows={rows} terms={terms}"),
            &got[0],
            &want[0],
        );
        assert_close(
            &format!("dv b={b} rows={rows} terms={terms}"),
            &got[1],
            &want[1],
        );
    }
}

#[test]
fn oft_kernel_limits_are_clear_errors() {
    let gpu = device("wgpu");
    let v = upload(vec![0.0; 80 * 79 / 2], [1, 80 * 79 / 2], &gpu);
    let e = cayley::cayley_neumann(v, 80, 5).unwrap_err();
    assert!(matches!(e, OftKernelError::TooLarge(_)), "{e}");
    assert!(e.to_string().contains("2 ≤ b ≤ 64"), "{e}");
    let x = upload(vec![0.0; 4 * 48], [4, 48], &gpu);
    let r = upload(vec![0.0; 2 * 16 * 16], [2, 16, 16], &gpu);
    let e = block_rotate(x, r).unwrap_err();
    assert!(e.to_string().contains("2 rotations for 3 blocks"), "{e}");
}
