// Entry point of qgemv.wgsl without subgroups: the 64 invocations' partial dot products are
// added up by a tree in workgroup memory (6 halving rounds).

var<workgroup> sums: array<vec4<f32>, 512>;   // [invocation][row]

@compute @workgroup_size(64, 1, 1)
fn main(
    @builtin(workgroup_id) wg: vec3<u32>,
    @builtin(local_invocation_index) t: u32,
) {
    let c0 = wg.x * COLS;
    let acc = partial_dots(t, c0);
    for (var i = 0u; i < MAXM; i++) {
        sums[t * MAXM + i] = acc[i];
    }
    workgroupBarrier();
    for (var stride = WG / 2u; stride > 0u; stride /= 2u) {
        if t < stride {
            for (var i = 0u; i < MAXM; i++) {
                sums[t * MAXM + i] += sums[(t + stride) * MAXM + i];
            }
        }
        workgroupBarrier();
    }
    if t < info[0] {
        write_row(t, c0, sums[t]);
    }
}
