//! The CUDA scan against the f64 reference. Each test skips (and says so) without a GPU.

use super::*;
use crate::bf16::Output;
use crate::cuda::testing::{device, upload_bf16};
use crate::cuda::DeviceBuffer;
use crate::rng::Rng;
use crate::scan::cpu::InputBuffers;
use crate::scan::reference;
use crate::testing::{assert_close, bits, to_f64};
use crate::Backend;

/// Host data of one scan problem, f32 as the device sees it.
struct Problem {
    dims: ScanDims,
    inputs: InputBuffers,
    resets: Option<Vec<u32>>,
    initial: Option<Vec<f32>>,
    d_out: Vec<f32>,
}

impl Problem {
    fn random(
        dims: ScanDims,
        seed: u64,
        gated: bool,
        with_resets: bool,
        with_initial: bool,
    ) -> Self {
        let mut rng = Rng::new(seed);
        let mut inputs = InputBuffers::random(dims, gated, &mut rng);
        // A few positions take softplus's pass-through branch.
        for i in (5..inputs.delta.len()).step_by(997) {
            inputs.delta[i] = 21.0;
        }
        let normal =
            |rng: &mut Rng, n: usize| -> Vec<f32> { (0..n).map(|_| rng.normal() as f32).collect() };
        Self {
            dims,
            resets: with_resets.then(|| {
                (0..dims.batch * dims.len)
                    .map(|_| u32::from(rng.below(20) == 0))
                    .collect()
            }),
            initial: with_initial.then(|| normal(&mut rng, dims.state_len())),
            d_out: normal(&mut rng, inputs.u.len()),
            inputs,
        }
    }

    fn reference_inputs(&self) -> [Vec<f64>; 8] {
        let x = &self.inputs;
        [
            to_f64(&x.u),
            to_f64(&x.delta),
            to_f64(&x.a_log),
            to_f64(&x.b),
            to_f64(&x.c),
            to_f64(&x.d_skip),
            to_f64(&x.delta_bias),
            to_f64(x.z.as_deref().unwrap_or(&[])),
        ]
    }
}

fn as_inputs(v: &[Vec<f64>; 8], gated: bool) -> ScanInputs<&[f64]> {
    ScanInputs {
        u: &v[0],
        delta: &v[1],
        a_log: &v[2],
        b: &v[3],
        c: &v[4],
        d_skip: &v[5],
        delta_bias: &v[6],
        z: gated.then_some(&v[7][..]),
    }
}

/// The problem's inputs on the device.
struct OnDevice {
    tensors: Vec<DeviceBuffer>,
    z: Option<DeviceBuffer>,
    d_out: DeviceBuffer,
    /// The streams as bf16 bits, given to the scan instead when present.
    narrow: Option<NarrowStreams>,
    resets: Option<DeviceIds>,
}

/// u, delta, z and d_out as bf16 bits.
struct NarrowStreams {
    u: DeviceBuffer<u16>,
    delta: DeviceBuffer<u16>,
    z: Option<DeviceBuffer<u16>>,
    d_out: DeviceBuffer<u16>,
}

impl OnDevice {
    fn new(cuda: &Cuda, p: &Problem) -> Self {
        let x = &p.inputs;
        let tensors = [
            &x.u,
            &x.delta,
            &x.a_log,
            &x.b,
            &x.c,
            &x.d_skip,
            &x.delta_bias,
        ]
        .iter()
        .map(|t| cuda.upload(t).unwrap())
        .collect();
        Self {
            tensors,
            z: x.z.as_ref().map(|z| cuda.upload(z).unwrap()),
            d_out: cuda.upload(&p.d_out).unwrap(),
            narrow: None,
            resets: p.resets.as_ref().map(|r| cuda.upload_ids(r).unwrap()),
        }
    }

    /// As [`OnDevice::new`], the streams given as bf16 bits: their values must be bf16
    /// values already (then the bits hold them exactly).
    fn with_bf16_streams(cuda: &Cuda, p: &Problem) -> Self {
        let narrow = |values: &[f32]| {
            let bits: Vec<u16> = values.iter().map(|&v| crate::bf16::from_f32(v)).collect();
            assert_eq!(crate::bf16::widened(&bits), values, "not bf16 values");
            upload_bf16(cuda, &bits)
        };
        Self {
            narrow: Some(NarrowStreams {
                u: narrow(&p.inputs.u),
                delta: narrow(&p.inputs.delta),
                z: p.inputs.z.as_deref().map(narrow),
                d_out: narrow(&p.d_out),
            }),
            ..Self::new(cuda, p)
        }
    }

    fn inputs<'a>(&'a self, cuda: &Cuda) -> DeviceInputs<'a> {
        let t = &self.tensors;
        let wide = |x: &'a DeviceBuffer| Input::F32(cuda.all(x));
        let (u, delta, z) = match &self.narrow {
            Some(n) => (
                Input::Bf16(&n.u),
                Input::Bf16(&n.delta),
                n.z.as_ref().map(Input::Bf16),
            ),
            None => (wide(&t[0]), wide(&t[1]), self.z.as_ref().map(wide)),
        };
        ScanInputs {
            u,
            delta,
            a_log: cuda.all(&t[2]),
            b: cuda.all(&t[3]),
            c: cuda.all(&t[4]),
            d_skip: cuda.all(&t[5]),
            delta_bias: cuda.all(&t[6]),
            z,
        }
    }

    fn d_out<'a>(&'a self, cuda: &Cuda) -> Input<'a, Cuda> {
        match &self.narrow {
            Some(n) => Input::Bf16(&n.d_out),
            None => Input::F32(cuda.all(&self.d_out)),
        }
    }
}

struct DeviceForward {
    out: Vec<f32>,
    final_state: Vec<f32>,
    checkpoints: DeviceBuffer,
}

/// Writes the (batch, len, channels) outputs (out; du, ddelta, dz and out again) as bf16,
/// read back widened.
#[derive(Clone, Copy, PartialEq)]
enum Written {
    F32,
    Bf16,
}

/// Where `run_forward` / `run_backward` write a GEMM-only output, and how to read it back.
struct Destination {
    f32: DeviceBuffer,
    bf16: Option<DeviceBuffer<u16>>,
}

impl Destination {
    /// Poisoned: every element must be written.
    fn new(cuda: &Cuda, len: usize, written: Written) -> Self {
        Self {
            f32: cuda.upload(&vec![f32::NAN; len]).unwrap(),
            bf16: (written == Written::Bf16).then(|| cuda.zeros_bf16(len).unwrap()),
        }
    }

    fn output<'a>(&'a mut self, cuda: &Cuda) -> Output<'a, Cuda> {
        match &mut self.bf16 {
            Some(bits) => Output::Bf16(bits),
            None => Output::F32(cuda.all_mut(&mut self.f32)),
        }
    }

    fn values(&self, cuda: &Cuda) -> Vec<f32> {
        match &self.bf16 {
            Some(bits) => crate::bf16::widened(&cuda.download_bf16(bits).unwrap()),
            None => cuda.download(cuda.all(&self.f32)).unwrap(),
        }
    }
}

/// Every way of running the forward, which every forward test covers.
const PATHS: [ForwardPath; 2] = [ForwardPath::Segmented, ForwardPath::OnePass];

fn run_forward(
    cuda: &Cuda,
    p: &Problem,
    on: &OnDevice,
    written: Written,
    path: ForwardPath,
) -> DeviceForward {
    let dims = p.dims;
    let act = dims.batch * dims.len * dims.channels;
    let mut out = Destination::new(cuda, act, written);
    let mut checkpoints = cuda.upload(&vec![f32::NAN; dims.checkpoint_len()]).unwrap();
    let initial = p
        .initial
        .clone()
        .unwrap_or_else(|| vec![0.0; dims.state_len()]);
    let mut state = cuda.upload(&initial).unwrap();
    let state_arg = p.initial.is_some().then(|| cuda.all_mut(&mut state));
    cuda.scan_forward_device(
        path,
        dims,
        &on.inputs(cuda),
        on.resets.as_ref(),
        state_arg,
        Some(cuda.all_mut(&mut checkpoints)),
        out.output(cuda).into(),
    )
    .unwrap();
    DeviceForward {
        out: out.values(cuda),
        final_state: cuda.download(cuda.all(&state)).unwrap(),
        checkpoints,
    }
}

/// Parameter gradients start at these values, to check that they are accumulated.
const PRIOR: f32 = 0.25;

struct DeviceGrads {
    all: Vec<(&'static str, Vec<f32>)>,
}

fn run_backward(
    cuda: &Cuda,
    p: &Problem,
    on: &OnDevice,
    checkpoints: &DeviceBuffer,
    written: Written,
) -> DeviceGrads {
    let dims = p.dims;
    let act = dims.batch * dims.len * dims.channels;
    let rows = dims.batch * dims.len * dims.state;
    let poison = |n: usize| cuda.upload(&vec![f32::NAN; n]).unwrap();
    let prior = |n: usize| cuda.upload(&vec![PRIOR; n]).unwrap();
    let (mut db, mut dc) = (poison(rows), poison(rows));
    let mut du = Destination::new(cuda, act, written);
    let mut ddelta = Destination::new(cuda, act, written);
    let mut dz = p
        .inputs
        .z
        .as_ref()
        .map(|_| Destination::new(cuda, act, written));
    let mut out = Destination::new(cuda, act, written);
    let mut da_log = prior(dims.channels * dims.state);
    let (mut dd_skip, mut ddelta_bias) = (prior(dims.channels), prior(dims.channels));
    let grads = ScanGrads {
        du: du.output(cuda),
        ddelta: ddelta.output(cuda),
        da_log: cuda.all_mut(&mut da_log),
        db: cuda.all_mut(&mut db),
        dc: cuda.all_mut(&mut dc),
        dd_skip: cuda.all_mut(&mut dd_skip),
        ddelta_bias: cuda.all_mut(&mut ddelta_bias),
        dz: dz.as_mut().map(|dz| dz.output(cuda)),
        out: Some(out.output(cuda)),
    };
    cuda.scan_backward(
        dims,
        &on.inputs(cuda),
        on.resets.as_ref(),
        cuda.all(checkpoints),
        on.d_out(cuda),
        grads,
    )
    .unwrap();
    let down = |x: &DeviceBuffer| cuda.download(cuda.all(x)).unwrap();
    let mut all = vec![
        ("du", du.values(cuda)),
        ("ddelta", ddelta.values(cuda)),
        ("da_log", down(&da_log)),
        ("db", down(&db)),
        ("dc", down(&dc)),
        ("dd_skip", down(&dd_skip)),
        ("ddelta_bias", down(&ddelta_bias)),
    ];
    if let Some(dz) = &dz {
        all.push(("dz", dz.values(cuda)));
    }
    all.push(("out", out.values(cuda)));
    DeviceGrads { all }
}

/// Forward (output, final state, checkpoints) by every path and every gradient against the
/// reference; the output the backward makes again has the forward's bits.
fn check_against_reference(cuda: &Cuda, p: &Problem) {
    for path in PATHS {
        check_path_against_reference(cuda, p, path);
    }
}

fn check_path_against_reference(cuda: &Cuda, p: &Problem, path: ForwardPath) {
    let dims = p.dims;
    let host = p.reference_inputs();
    let x = as_inputs(&host, p.inputs.z.is_some());
    let resets = p.resets.as_deref();
    let initial = p.initial.as_ref().map(|h| to_f64(h));
    let want = reference::forward(dims, &x, resets, initial.as_deref());
    let on = OnDevice::new(cuda, p);
    let got = run_forward(cuda, p, &on, Written::F32, path);
    assert_close("out", &got.out, &want.out, 1e-5, 1e-7);
    assert_close(
        "checkpoints",
        &cuda.download(cuda.all(&got.checkpoints)).unwrap(),
        &want.checkpoints,
        1e-5,
        1e-7,
    );
    if p.initial.is_some() {
        assert_close(
            "final state",
            &got.final_state,
            &want.final_state,
            1e-5,
            1e-7,
        );
    }

    let want_out = want.out;
    let forward_out = got.out;
    let want = reference::backward(dims, &x, resets, initial.as_deref(), &to_f64(&p.d_out));
    let got = run_backward(cuda, p, &on, &got.checkpoints, Written::F32);
    let prior = |v: &[f64]| -> Vec<f64> { v.iter().map(|g| g + PRIOR as f64).collect() };
    let mut expected = vec![
        ("du", want.du),
        ("ddelta", want.ddelta),
        ("da_log", prior(&want.da_log)),
        ("db", want.db),
        ("dc", want.dc),
        ("dd_skip", prior(&want.dd_skip)),
        ("ddelta_bias", prior(&want.ddelta_bias)),
    ];
    if let Some(dz) = want.dz {
        expected.push(("dz", dz));
    }
    expected.push(("out", want_out));
    assert_eq!(got.all.len(), expected.len());
    for ((name, actual), (_, reference)) in got.all.iter().zip(&expected) {
        assert_close(name, actual, reference, 1e-4, 1e-7);
    }
    let (_, remade) = got.all.last().unwrap();
    assert_eq!(bits(remade), bits(&forward_out), "out made again, {path:?}");
}

#[test]
fn cuda_scan_gated_with_resets_and_initial_state() {
    let Some(cuda) = device() else { return };
    // len not a multiple of the chunk; channels not a multiple of any block size.
    let dims = ScanDims {
        batch: 2,
        len: 300,
        channels: 80,
        state: 16,
        chunk: 64,
    };
    check_against_reference(&cuda, &Problem::random(dims, 1, true, true, true));
}

#[test]
fn cuda_scan_chunks_not_a_multiple_of_the_sub_chunk() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 3,
        len: 101,
        channels: 40,
        state: 16,
        chunk: 13,
    };
    check_against_reference(&cuda, &Problem::random(dims, 11, true, true, true));
}

#[test]
fn cuda_scan_plain() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 1,
        len: 517,
        channels: 33,
        state: 16,
        chunk: 64,
    };
    check_against_reference(&cuda, &Problem::random(dims, 2, false, false, false));
}

#[test]
fn cuda_scan_segments_of_several_chunks() {
    let Some(cuda) = device() else { return };
    // batch · channels large enough that each GPU segment spans several chunks.
    let dims = ScanDims {
        batch: 4,
        len: 203,
        channels: 2000,
        state: 16,
        chunk: 8,
    };
    check_against_reference(&cuda, &Problem::random(dims, 3, true, true, true));
}

#[test]
fn cuda_scan_long_segment_chains() {
    let Some(cuda) = device() else { return };
    // Few channels and short chunks: a segment a chunk, 250 of them, so that the combine
    // kernels load many rounds of summaries ahead; no resets, so that carries travel far.
    let dims = ScanDims {
        batch: 1,
        len: 2000,
        channels: 64,
        state: 16,
        chunk: 8,
    };
    assert_eq!(
        segments_for(dims, 1, cuda.target_threads().unwrap()).segments,
        250
    );
    check_against_reference(&cuda, &Problem::random(dims, 5, true, false, true));
}

#[test]
fn cuda_scan_single_segment() {
    let Some(cuda) = device() else { return };
    // Enough channels to fill the device without cutting rows: the one-pass path.
    let dims = ScanDims {
        batch: 1,
        len: 21,
        channels: 140_000,
        state: 16,
        chunk: 8,
    };
    assert_eq!(
        segments_for(dims, 1, cuda.target_threads().unwrap()).segments,
        1
    );
    check_against_reference(&cuda, &Problem::random(dims, 4, true, true, true));
}

/// Written as bf16, the output, du, ddelta and dz are the f32 results rounded, bit for
/// bit; the rest is unchanged.
#[test]
fn cuda_scan_bf16_outputs_are_the_rounded_f32_outputs() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 2,
        len: 300,
        channels: 80,
        state: 16,
        chunk: 64,
    };
    let p = Problem::random(dims, 9, true, true, false);
    let on = OnDevice::new(&cuda, &p);
    let rounded = |values: &[f32]| -> Vec<u32> {
        values
            .iter()
            .map(|&v| crate::bf16::to_f32(crate::bf16::from_f32(v)).to_bits())
            .collect()
    };
    for path in PATHS {
        let forward = run_forward(&cuda, &p, &on, Written::F32, path);
        let forward16 = run_forward(&cuda, &p, &on, Written::Bf16, path);
        assert_eq!(bits(&forward16.out), rounded(&forward.out), "{path:?}");
    }
    let forward = run_forward(&cuda, &p, &on, Written::F32, ForwardPath::Segmented);
    let f32s = run_backward(&cuda, &p, &on, &forward.checkpoints, Written::F32);
    let bf16s = run_backward(&cuda, &p, &on, &forward.checkpoints, Written::Bf16);
    for ((name, f32s), (_, bf16s)) in f32s.all.iter().zip(&bf16s.all) {
        let want = if ["du", "ddelta", "dz", "out"].contains(name) {
            rounded(f32s)
        } else {
            bits(f32s)
        };
        assert_eq!(bits(bf16s), want, "{name}");
    }
}

/// The streams (u, delta, z, d_out) given as bf16 bits give the f32 scan's results on the
/// widened bits, bit for bit: staged by 8 channels a copy (80 channels) and element by
/// element (82, 33). A bf16 stream beside f32 ones is refused.
#[test]
fn cuda_scan_reads_bf16_streams_as_their_widened_values() {
    let Some(cuda) = device() else { return };
    let rounded = |values: &mut Vec<f32>| {
        let bits: Vec<u16> = values.iter().map(|&v| crate::bf16::from_f32(v)).collect();
        *values = crate::bf16::widened(&bits);
    };
    for channels in [80, 82, 33] {
        let dims = ScanDims {
            batch: 2,
            len: 300,
            channels,
            state: 16,
            chunk: 64,
        };
        let mut p = Problem::random(dims, 10, true, true, true);
        rounded(&mut p.inputs.u);
        rounded(&mut p.inputs.delta);
        rounded(p.inputs.z.as_mut().unwrap());
        rounded(&mut p.d_out);
        let wide = OnDevice::new(&cuda, &p);
        let narrow = OnDevice::with_bf16_streams(&cuda, &p);
        for path in PATHS {
            let want = run_forward(&cuda, &p, &wide, Written::F32, path);
            let got = run_forward(&cuda, &p, &narrow, Written::F32, path);
            assert_eq!(
                bits(&got.out),
                bits(&want.out),
                "out, {channels} channels, {path:?}"
            );
        }
        let want = run_forward(&cuda, &p, &wide, Written::F32, ForwardPath::Segmented);
        let got = run_forward(&cuda, &p, &narrow, Written::F32, ForwardPath::Segmented);
        let want = run_backward(&cuda, &p, &wide, &want.checkpoints, Written::F32);
        let got = run_backward(&cuda, &p, &narrow, &got.checkpoints, Written::F32);
        for ((name, got), (_, want)) in got.all.iter().zip(&want.all) {
            assert_eq!(bits(got), bits(want), "{name}, {channels} channels");
        }
        let mut mixed = narrow.inputs(&cuda);
        mixed.delta = wide.inputs(&cuda).delta;
        assert_invalid(&cuda, dims, &mixed);
    }
}

/// The forward on `inputs` is refused as invalid before launch.
fn assert_invalid(cuda: &Cuda, dims: ScanDims, inputs: &DeviceInputs<'_>) {
    let mut out = cuda.zeros(dims.batch * dims.len * dims.channels).unwrap();
    let error = cuda
        .scan_forward(
            dims,
            inputs,
            None,
            None,
            None,
            Output::F32(cuda.all_mut(&mut out)),
        )
        .unwrap_err();
    assert!(matches!(error, KernelError::Invalid { .. }), "{error}");
}

/// The longest chunk the launcher accepts runs (its shared memory fits), and one more
/// position is refused before launch.
#[test]
fn cuda_scan_longest_chunk() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 1,
        len: 2 * MAX_CHUNK + 5,
        channels: 70,
        state: 16,
        chunk: MAX_CHUNK,
    };
    check_against_reference(&cuda, &Problem::random(dims, 7, true, true, true));
    let longer = ScanDims {
        chunk: MAX_CHUNK + 1,
        ..dims
    };
    let p = Problem::random(longer, 8, false, false, false);
    let on = OnDevice::new(&cuda, &p);
    assert_invalid(&cuda, longer, &on.inputs(&cuda));
}

#[test]
fn cuda_scan_backward_is_deterministic() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 2,
        len: 700,
        channels: 200,
        state: 16,
        chunk: 64,
    };
    let p = Problem::random(dims, 5, true, true, false);
    let on = OnDevice::new(&cuda, &p);
    let forward = run_forward(&cuda, &p, &on, Written::F32, ForwardPath::Segmented);
    let first = run_backward(&cuda, &p, &on, &forward.checkpoints, Written::F32);
    let second = run_backward(&cuda, &p, &on, &forward.checkpoints, Written::F32);
    for ((name, a), (_, b)) in first.all.iter().zip(&second.all) {
        assert!(
            bits(a) == bits(b),
            "{name} differs between two identical backward runs"
        );
    }
}

#[test]
fn cuda_scan_rejects_bad_shapes() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 1,
        len: 10,
        channels: 4,
        state: 16,
        chunk: 4,
    };
    let p = Problem::random(dims, 6, false, false, false);
    let on = OnDevice::new(&cuda, &p);
    let mut short = cuda.zeros(39).unwrap();
    let error = cuda
        .scan_forward(
            dims,
            &on.inputs(&cuda),
            None,
            None,
            None,
            Output::F32(cuda.all_mut(&mut short)),
        )
        .unwrap_err();
    assert!(matches!(
        error,
        KernelError::Shape {
            tensor: "out",
            expected: 40,
            actual: 39,
            ..
        }
    ));
    assert_invalid(&cuda, ScanDims { state: 8, ..dims }, &on.inputs(&cuda));
}

#[test]
fn the_forward_runs_in_one_pass_where_batch_and_channels_fill_the_device() {
    let path =
        |batch, channels| ForwardPath::for_shape(ScanDims::new(batch, 2048, channels, 16), 132);
    assert_eq!(path(8, 1536), ForwardPath::OnePass);
    assert_eq!(path(64, 256), ForwardPath::OnePass);
    assert_eq!(path(16, 1536), ForwardPath::OnePass);
    assert_eq!(path(1, 8448), ForwardPath::OnePass);
    assert_eq!(path(1, 8447), ForwardPath::Segmented);
    assert_eq!(path(1, 1024), ForwardPath::Segmented);
    assert_eq!(path(4, 512), ForwardPath::Segmented);
}

#[test]
fn segments_cover_the_row_in_whole_chunks() {
    let dims = ScanDims {
        batch: 1,
        len: 2048,
        channels: 1024,
        state: 16,
        chunk: 64,
    };
    let cut = segments_for(dims, 1, 132 * 1024);
    assert_eq!(
        cut,
        Segments {
            seg_len: 64,
            segments: 32
        }
    );
    let dims = ScanDims {
        batch: 1,
        len: 524_288,
        channels: 1024,
        state: 16,
        chunk: 64,
    };
    let cut = segments_for(dims, 1, 132 * 1024);
    assert_eq!(cut.seg_len % 64, 0);
    assert!(cut.segments * cut.seg_len >= dims.len && (cut.segments - 1) * cut.seg_len < dims.len);
    assert!((100..=132).contains(&cut.segments), "{cut:?}");
    let dims = ScanDims {
        batch: 64,
        len: 100,
        channels: 4096,
        state: 16,
        chunk: 64,
    };
    assert_eq!(segments_for(dims, 1, 132 * 1024).segments, 1);
}

/// The CUDA op against the CPU op (the reference backend) on the same inputs.
#[test]
fn cuda_scan_matches_the_cpu_op() {
    let Some(cuda) = device() else { return };
    let dims = ScanDims {
        batch: 3,
        len: 333,
        channels: 150,
        state: 16,
        chunk: 32,
    };
    let p = Problem::random(dims, 7, true, true, true);
    let inputs = p.inputs.views();
    let act = dims.batch * dims.len * dims.channels;
    let rows = dims.batch * dims.len * dims.state;
    let mut state = p.initial.clone().unwrap();
    let mut checkpoints = vec![0.0; dims.checkpoint_len()];
    let mut out = vec![0.0; act];
    let resets = p.resets.as_deref();
    crate::scan::cpu::forward(
        dims,
        &inputs,
        resets,
        Some(&mut state),
        Some(&mut checkpoints),
        &mut out,
    )
    .unwrap();
    let on = OnDevice::new(&cuda, &p);
    for path in PATHS {
        let got = run_forward(&cuda, &p, &on, Written::F32, path);
        assert_close("out", &got.out, &to_f64(&out), 1e-5, 1e-7);
        assert_close("final state", &got.final_state, &to_f64(&state), 1e-5, 1e-7);
        let device_checkpoints = cuda.download(cuda.all(&got.checkpoints)).unwrap();
        assert_close(
            "checkpoints",
            &device_checkpoints,
            &to_f64(&checkpoints),
            1e-5,
            1e-7,
        );
    }
    let got = run_forward(&cuda, &p, &on, Written::F32, ForwardPath::OnePass);

    let (mut du, mut ddelta, mut dz) = (vec![0.0; act], vec![0.0; act], vec![0.0; act]);
    let (mut db, mut dc) = (vec![0.0; rows], vec![0.0; rows]);
    let mut da_log = vec![PRIOR; dims.channels * dims.state];
    let (mut dd_skip, mut ddelta_bias) = (vec![PRIOR; dims.channels], vec![PRIOR; dims.channels]);
    let grads = ScanGrads {
        du: &mut du[..],
        ddelta: &mut ddelta[..],
        da_log: &mut da_log[..],
        db: &mut db[..],
        dc: &mut dc[..],
        dd_skip: &mut dd_skip[..],
        ddelta_bias: &mut ddelta_bias[..],
        dz: Some(&mut dz[..]),
        out: None,
    };
    crate::scan::cpu::backward(dims, &inputs, resets, &checkpoints, &p.d_out, grads).unwrap();
    let got = run_backward(&cuda, &p, &on, &got.checkpoints, Written::F32);
    let cpu = [du, ddelta, da_log, db, dc, dd_skip, ddelta_bias, dz, out];
    assert_eq!(got.all.len(), cpu.len());
    for ((name, actual), expected) in got.all.iter().zip(&cpu) {
        assert_close(name, actual, &to_f64(expected), 1e-4, 1e-7);
    }
}
