// Decoding of the packed weight layout shared by qmatmul.wgsl and qgemv.wgsl (appended to
// either; it uses their `packed` and `info` bindings).
//
// Every format is "integer codes + scales" (`CodeScheme` in src/quant/ggml/mod.rs). `packed`
// holds, as u32 words, these sections in order (word offsets in info[3..8]):
//
//   codes, low plane   LO_BITS (2, 4 or 8) bits per value, flat row-major over W [N, K]: value i
//                      at bits (i % (32 / LO_BITS)) · LO_BITS of word i / (32 / LO_BITS)
//   codes, high plane  HI_BITS (0, 1 or 2) bits per value, the same way   (from info[3])
//   d                  one f32 per block of BLOCK values                  (from info[4])
//   dmin               one f32 per block, when HAS_MIN                    (from info[5])
//   sub scales         SUB_BITS (4 or 8) bits per sub-block of SUB values (from info[6])
//   sub mins           the same, when HAS_MIN and SUB > 0                 (from info[7])
//
// With c = low | high << LO_BITS and q = c − CODE_OFFSET (or NF4[c] when TABLE), a value is
//   SUB = 0:  q · d (+ dmin)                                     bitsandbytes NF4, ggml Q4_0 …Q8_0
//   SUB > 0:  (d · (s − SUB_OFFSET)) · q (− dmin · m)            ggml Q2_K … Q6_K
// which is ggml's float arithmetic in ggml's order. Codes keep their file widths (5-bit codes
// are 4 + 1 bits, 6-bit 4 + 2, 3-bit 2 + 1) and K sub-block scales stay 4- or 8-bit integers, so
// the buffer is within 1.2× of the file's bits per weight (`inspect` prints both).
//
// The host checks K % 16 == 0 and that BLOCK and SUB are multiples of 4: every aligned group of 4
// values then lies in one block, one sub-block and one word of each plane.

const TABLE: bool = {{ table }};
const LO_BITS: u32 = {{ lo_bits }}u;
const HI_BITS: u32 = {{ hi_bits }}u;
const CODE_OFFSET: i32 = {{ code_offset }};
const BLOCK: u32 = {{ block }}u;
const SUB: u32 = {{ sub }}u;
const SUB_BITS: u32 = {{ sub_bits }}u;
const SUB_OFFSET: i32 = {{ sub_offset }};
const HAS_MIN: bool = {{ has_min }};

// bitsandbytes' NF4 code table (get_4bit_type("nf4")), exact fp32 values.
var<private> NF4: array<f32, 16> = array<f32, 16>(
    -1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453,
    -0.28444138169288635, -0.18477343022823334, -0.09105003625154495, 0.0,
    0.07958029955625534, 0.16093020141124725, 0.24611230194568634, 0.33791524171829224,
    0.44070982933044434, 0.5626170039176941, 0.7229568362236023, 1.0,
);

// Entries i .. i + 4 (i % 4 == 0) of a plane of `bits`-bit entries starting at word `start`.
fn plane4(start: u32, i: u32, bits: u32) -> vec4<u32> {
    let per = 32u / bits;
    let word = packed[start + i / per];
    let shift = (i % per) * bits;
    let s = vec4<u32>(shift, shift + bits, shift + 2u * bits, shift + 3u * bits);
    return (vec4<u32>(word) >> s) & vec4<u32>((1u << bits) - 1u);
}

// Entry j of a plane of `bits`-bit entries starting at word `start`.
fn plane1(start: u32, j: u32, bits: u32) -> u32 {
    let per = 32u / bits;
    return (packed[start + j / per] >> ((j % per) * bits)) & ((1u << bits) - 1u);
}

// The four dequantized values W[row, col .. col + 4] (col % 4 == 0).
fn deq4(row: u32, col: u32, k: u32) -> vec4<f32> {
    let i = row * k + col;
    var c = plane4(0u, i, LO_BITS);
    if HI_BITS > 0u {
        c |= plane4(info[3], i, max(HI_BITS, 1u)) << vec4<u32>(LO_BITS);
    }
    var q: vec4<f32>;
    if TABLE {
        q = vec4<f32>(NF4[c.x], NF4[c.y], NF4[c.z], NF4[c.w]);
    } else {
        q = vec4<f32>(vec4<i32>(c) - vec4<i32>(CODE_OFFSET));
    }
    let blk = i / BLOCK;
    let d = bitcast<f32>(packed[info[4] + blk]);
    var scale = d;
    var lo = bitcast<f32>(0x80000000u);   // -0.0, the additive identity (keeps ggml's -0.0)
    if SUB > 0u {
        let j = i / max(SUB, 1u);
        let bits = max(SUB_BITS, 1u);
        scale = d * f32(i32(plane1(info[6], j, bits)) - SUB_OFFSET);
        if HAS_MIN {
            lo = -(bitcast<f32>(packed[info[5] + blk]) * f32(plane1(info[7], j, bits)));
        }
    } else if HAS_MIN {
        lo = bitcast<f32>(packed[info[5] + blk]);
    }
    return scale * q + vec4<f32>(lo);
}
