//! Vocabulary matrices in row shards (`src/model/vocab.rs`): the embedding lookup, the head
//! product and the chunked loss streamed over the shards equal the unsharded computation, on
//! both backends, with an uneven last shard of one row.

use crate::common::*;
use burn::tensor::{Int, Tensor, TensorData};
use wgtune::model::loss::{causal_lm_loss, chunked_causal_lm_loss};
use wgtune::model::read_f32;
use wgtune::model::vocab::VocabMatrix;

fn check(backend: &str) {
    let device = device(backend).autodiff();
    let (v, d) = (50, 16);
    let w = crate::kernels::values(v * d, 41);
    let dense: Tensor<2> = Tensor::from_data(TensorData::new(w.clone(), [v, d]), &device);
    let sharded = VocabMatrix::from_host_sharded(w, v, d, 7, &device);
    assert_eq!(sharded.shards().len(), 8);
    let read = |t: Tensor<2>| block(read_f32(t)).unwrap();

    let ids: Vec<i64> = vec![0, 6, 7, 49, 48, 13, 14, 21, 42, 3];
    let idx = Tensor::<2, Int>::from_data(TensorData::new(ids.clone(), [2, 5]), &device);
    let want = read(dense.clone().select(0, idx.clone().reshape([10])));
    let got = read(sharded.embed(idx).reshape([10, d]));
    assert_eq!(got, want, "{backend}: embedding rows");

    let x: Tensor<2> = Tensor::from_data(
        TensorData::new(crate::kernels::values(10 * d, 42), [10, d]),
        &device,
    );
    let want = read(x.clone().matmul(dense.clone().transpose()));
    let e = crate::kernels::rel_err(&read(sharded.matmul_t(x.clone())), &want);
    assert!(e < 1e-6, "{backend}: head product rel err {e}");
    // The chunked loss over the shards (3 rows per chunk) vs the full-logits loss: value and
    // gradient with respect to the hidden states.
    let labels = vec![ids[..5].to_vec(), ids[5..].to_vec()];
    let loss_and_grad = |chunked: bool| {
        let h = x.clone().reshape([2, 5, d]).require_grad();
        let (loss, n) = if chunked {
            chunked_causal_lm_loss(h.clone(), &sharded, Some(3.0), &labels, 3).unwrap()
        } else {
            let logits = h.clone().reshape([10, d]).matmul(dense.clone().transpose());
            let capped = logits.div_scalar(3.0).tanh().mul_scalar(3.0);
            causal_lm_loss(capped.reshape([2, 5, v]), &labels).unwrap()
        };
        assert_eq!(n, 8);
        let grads = loss.backward();
        let gh = block(read_f32(h.grad(&grads).unwrap())).unwrap();
        (block(read_f32(loss)).unwrap()[0], gh)
    };
    let (want_loss, want_grad) = loss_and_grad(false);
    let (got_loss, got_grad) = loss_and_grad(true);
    assert!(
        (got_loss - want_loss).abs() < 1e-5 * want_loss.abs(),
        "{backend}: loss {got_loss} vs {want_loss}"
    );
    let e = crate::kernels::rel_err(&got_grad, &want_grad);
    assert!(e < 1e-5, "{backend}: hidden-state gradient rel err {e}");
}

#[test]
fn sharded_vocabulary_equals_dense_on_cpu() {
    check("cpu");
}

#[test]
fn sharded_vocabulary_equals_dense_on_wgpu() {
    check("wgpu");
}
