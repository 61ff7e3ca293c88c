//! bf16 GEMMs on cuBLASLt, with the algorithm chosen per shape. cuBLASLt's heuristic
//! offers several; `cublasGemmEx` runs the first, which on the anchor's (16384 × 1536 ×
//! 768)-class GEMMs is up to 20 % slower than another it offers (docs/benchmarks.md). So
//! the first GEMM of each shape times the offers once and keeps the fastest (another must
//! beat the first by `MARGIN`) for the life of the device, and records the choice beside
//! the compiled kernels (`<cache>/seqmamba/kernels/gemm-<key>.algo`, the key hashing the
//! architecture, the multiprocessor count, cuBLASLt's version, the shape and the
//! alignments): later runs on the machine take the recorded algorithm while the heuristic
//! still offers it, so they give the same bits. Inside a graph capture (nothing can be
//! timed there) an unseen shape takes the first offer untimed. Where cuBLASLt offers
//! nothing (operands too little aligned for any of its algorithms), the GEMM goes through
//! `cublasGemmEx`.

use std::collections::hash_map::{Entry, HashMap};
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::cublaslt::result as lt;
use cudarc::cublaslt::sys;
use cudarc::driver::sys::CUstreamCaptureStatus;
use cudarc::driver::{CudaSlice, CudaStream};

use super::operation;
use crate::cuda::cache::{cache_dir, cache_key, store};
use crate::cuda::{device_error, poisoned, Cuda};
use crate::KernelError;

/// Algorithms asked of the heuristic per shape.
const OFFERED: i32 = 8;
/// Workspace an algorithm may use: what cuBLAS gives itself on Hopper.
const WORKSPACE_BYTES: usize = 32 << 20;
/// How much faster than the heuristic's first another algorithm must time to be kept.
const MARGIN: f64 = 0.03;

/// One column-major product `C (rows × cols) = op(A) · op(B)` as cuBLASLt takes it, with
/// the transposes and C's type; the row-major GEMM maps onto it as in `gemm::cuda::run`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct LtShape {
    pub rows: usize,
    pub cols: usize,
    pub depth: usize,
    pub transpose_a: bool,
    pub transpose_b: bool,
    /// Leading dimensions of A and B as stored.
    pub lda: usize,
    pub ldb: usize,
    pub out_bf16: bool,
}

/// Descriptors and the chosen algorithm of one shape.
struct Plan {
    desc: sys::cublasLtMatmulDesc_t,
    layouts: [sys::cublasLtMatrixLayout_t; 3],
    algo: sys::cublasLtMatmulAlgo_t,
}

impl Drop for Plan {
    fn drop(&mut self) {
        // SAFETY: the descriptors were created for this plan and nothing uses them now.
        unsafe {
            let _ = lt::destroy_matmul_desc(self.desc);
            for layout in self.layouts {
                let _ = lt::destroy_matrix_layout(layout);
            }
        }
    }
}

/// A shape and the alignments (bytes, at most 256) of A, B and C: algorithms need some.
type PlanKey = (LtShape, [u32; 3]);

/// A cuBLASLt handle, its workspace and the plans of the shapes seen so far (`None`: no
/// algorithm offered).
pub(crate) struct LtGemms {
    handle: sys::cublasLtHandle_t,
    workspace: CudaSlice<u8>,
    plans: Mutex<HashMap<PlanKey, Option<Plan>>>,
}

// SAFETY: the handle and descriptors are only used with the plans' lock held.
unsafe impl Send for LtGemms {}
// SAFETY: as above.
unsafe impl Sync for LtGemms {}

impl Drop for LtGemms {
    fn drop(&mut self) {
        if let Ok(plans) = self.plans.get_mut() {
            plans.clear();
        }
        // SAFETY: no plan of this handle is left.
        unsafe {
            let _ = lt::destroy_handle(self.handle);
        }
    }
}

fn lt_error(doing: &'static str) -> impl Fn(lt::CublasError) -> KernelError {
    move |e| device_error(doing, e)
}

/// The bytes of an algorithm as recorded (cuBLASLt's opaque words, little-endian).
fn algo_bytes(algo: &sys::cublasLtMatmulAlgo_t) -> Vec<u8> {
    algo.data
        .iter()
        .flat_map(|word| word.to_le_bytes())
        .collect()
}

/// What a recorded choice depends on: the device's kind, cuBLASLt's version, the shape.
fn record_key(cuda: &Cuda, (shape, alignments): PlanKey) -> u64 {
    // SAFETY: only reads the loaded library's version.
    let version = unsafe { sys::cublasLtGetVersion() } as u64;
    let numbers = [
        cuda.multiprocessors() as u64,
        version,
        shape.rows as u64,
        shape.cols as u64,
        shape.depth as u64,
        shape.lda as u64,
        shape.ldb as u64,
        u64::from(shape.transpose_a),
        u64::from(shape.transpose_b),
        u64::from(shape.out_bf16),
        u64::from(alignments[0]),
        u64::from(alignments[1]),
        u64::from(alignments[2]),
    ];
    let numbers: Vec<u8> = numbers.iter().flat_map(|n| n.to_le_bytes()).collect();
    cache_key(&[b"cublaslt gemm", cuda.arch().as_bytes(), &numbers])
}

impl LtGemms {
    /// cuBLASLt for GEMMs on `stream`; `None` where its library is missing (the GEMMs
    /// then go through `cublasGemmEx`).
    pub(crate) fn new(stream: &Arc<CudaStream>) -> Result<Option<Self>, KernelError> {
        // SAFETY: only checks that the library loads.
        if !unsafe { sys::is_culib_present() } {
            return Ok(None);
        }
        let handle = lt::create_handle().map_err(lt_error("creating the cuBLASLt handle"))?;
        // SAFETY: the workspace is only ever scratch for cuBLASLt.
        let workspace = unsafe { stream.alloc::<u8>(WORKSPACE_BYTES) }
            .map_err(|e| device_error("allocating cuBLASLt's workspace", e))?;
        Ok(Some(Self {
            handle,
            workspace,
            plans: Mutex::new(HashMap::new()),
        }))
    }

    /// `C = op(A) · op(B) (+ C when accumulating)` with bf16 A and B at `a` and `b`, f32
    /// sums, C (f32 or bf16) at `c`; false, doing nothing, where cuBLASLt has no algorithm
    /// for it.
    pub(crate) fn gemm(
        &self,
        cuda: &Cuda,
        shape: LtShape,
        a: u64,
        b: u64,
        c: u64,
        accumulate: bool,
    ) -> Result<bool, KernelError> {
        let alignment = |address: u64| 1u32 << address.trailing_zeros().min(8);
        let key = (shape, [alignment(a), alignment(b), alignment(c)]);
        let mut plans = self.plans.lock().map_err(|_| poisoned())?;
        let plan = match plans.entry(key) {
            Entry::Occupied(known) => known.into_mut(),
            Entry::Vacant(new) => new.insert(self.plan(cuda, key, a, b)?),
        };
        let Some(plan) = plan else { return Ok(false) };
        let beta = if accumulate { 1.0f32 } else { 0.0 };
        self.matmul(cuda, plan, a, b, c, beta)?;
        Ok(true)
    }

    fn matmul(
        &self,
        cuda: &Cuda,
        plan: &Plan,
        a: u64,
        b: u64,
        c: u64,
        beta: f32,
    ) -> Result<(), KernelError> {
        let alpha = 1.0f32;
        let [a_layout, b_layout, c_layout] = plan.layouts;
        // SAFETY: the caller checked that A, B and C hold the matrices the plan's layouts
        // describe; the workspace holds WORKSPACE_BYTES; the stream is the one every op of
        // this device runs on.
        unsafe {
            lt::matmul(
                self.handle,
                plan.desc,
                (&alpha as *const f32).cast(),
                (&beta as *const f32).cast(),
                a as *const c_void,
                a_layout,
                b as *const c_void,
                b_layout,
                c as *const c_void,
                c_layout,
                c as *mut c_void,
                c_layout,
                &plan.algo,
                cuda.address(&self.workspace) as *mut c_void,
                WORKSPACE_BYTES,
                cuda.stream().cu_stream() as sys::cudaStream_t,
            )
        }
        .map_err(lt_error("cublasLtMatmul"))
    }

    /// The descriptors of a shape and its algorithm: the fastest of the heuristic's
    /// offers, timed on the operands at `a` and `b` into a scratch C; `None` without offers.
    fn plan(&self, cuda: &Cuda, key: PlanKey, a: u64, b: u64) -> Result<Option<Plan>, KernelError> {
        let (shape, alignments) = key;
        let bf16 = sys::cudaDataType::CUDA_R_16BF;
        let f32_type = sys::cudaDataType::CUDA_R_32F;
        let (rows, cols, depth) = (shape.rows as u64, shape.cols as u64, shape.depth as u64);
        let (a_rows, a_cols) = if shape.transpose_a {
            (depth, rows)
        } else {
            (rows, depth)
        };
        let (b_rows, b_cols) = if shape.transpose_b {
            (cols, depth)
        } else {
            (depth, cols)
        };
        let out = if shape.out_bf16 { bf16 } else { f32_type };
        let layout_error = lt_error("creating a cuBLASLt layout");
        let mut plan = Plan {
            desc: lt::create_matmul_desc(sys::cublasComputeType_t::CUBLAS_COMPUTE_32F, f32_type)
                .map_err(lt_error("creating a cuBLASLt matmul"))?,
            layouts: [std::ptr::null_mut(); 3],
            // SAFETY: plain data, overwritten below before any use.
            algo: unsafe { std::mem::zeroed() },
        };
        plan.layouts = [
            lt::create_matrix_layout(bf16, a_rows, a_cols, shape.lda as i64)
                .map_err(&layout_error)?,
            lt::create_matrix_layout(bf16, b_rows, b_cols, shape.ldb as i64)
                .map_err(&layout_error)?,
            lt::create_matrix_layout(out, rows, cols, rows as i64).map_err(&layout_error)?,
        ];
        let transposes = [
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSA,
                operation(shape.transpose_a),
            ),
            (
                sys::cublasLtMatmulDescAttributes_t::CUBLASLT_MATMUL_DESC_TRANSB,
                operation(shape.transpose_b),
            ),
        ];
        for (attribute, value) in transposes {
            // SAFETY: the transpose attributes take a cublasOperation_t.
            unsafe {
                lt::set_matmul_desc_attribute(
                    plan.desc,
                    attribute,
                    (&value as *const cublasOperation_t).cast(),
                    std::mem::size_of::<cublasOperation_t>(),
                )
            }
            .map_err(lt_error("setting a cuBLASLt transpose"))?;
        }
        let offers = self.offers(&plan, alignments)?;
        let Some(first) = offers.first() else {
            return Ok(None);
        };
        plan.algo = first.algo;
        let record =
            cache_dir().map(|dir| dir.join(format!("gemm-{:016x}.algo", record_key(cuda, key))));
        let recorded = record
            .as_ref()
            .and_then(|path| std::fs::read(path).ok())
            .and_then(|bytes| offers.iter().find(|o| algo_bytes(&o.algo) == bytes));
        if let Some(offer) = recorded {
            plan.algo = offer.algo;
            return Ok(Some(plan));
        }
        let capturing = cuda
            .stream()
            .capture_status()
            .map_err(|e| device_error("reading the stream's capture status", e))?;
        if offers.len() == 1 || capturing != CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
            return Ok(Some(plan));
        }
        let bytes = shape.rows * shape.cols * if shape.out_bf16 { 2 } else { 4 };
        // SAFETY: scratch that the timed products overwrite before anything reads it.
        let scratch_buffer = unsafe { cuda.stream().alloc::<u8>(bytes) }
            .map_err(|e| device_error("allocating a GEMM's scratch output", e))?;
        let scratch = cuda.address(&scratch_buffer);
        let mut times = Vec::with_capacity(offers.len());
        for offer in &offers {
            plan.algo = offer.algo;
            // An offer that fails to run is never chosen.
            let time = cuda.median_ms(1, 5, || self.matmul(cuda, &plan, a, b, scratch, 0.0));
            times.push(time.unwrap_or(f64::INFINITY));
        }
        let (fastest, time) = times
            .iter()
            .copied()
            .enumerate()
            .min_by(|x, y| x.1.total_cmp(&y.1))
            .unwrap_or((0, times[0]));
        let chosen = if time < times[0] * (1.0 - MARGIN) {
            fastest
        } else {
            0
        };
        plan.algo = offers[chosen].algo;
        if let Some(path) = record {
            store(&path, &algo_bytes(&plan.algo));
        }
        Ok(Some(plan))
    }

    /// The heuristic's offers for `plan`'s descriptors and operands of these alignments
    /// (A, B, C), best guess first.
    fn offers(
        &self,
        plan: &Plan,
        alignments: [u32; 3],
    ) -> Result<Vec<sys::cublasLtMatmulHeuristicResult_t>, KernelError> {
        use sys::cublasLtMatmulPreferenceAttributes_t as Pref;
        let preference =
            lt::create_matmul_pref().map_err(lt_error("creating a cuBLASLt preference"))?;
        let workspace = WORKSPACE_BYTES as u64;
        // SAFETY: plain data the heuristic overwrites; at most OFFERED are written.
        let mut offers: Vec<sys::cublasLtMatmulHeuristicResult_t> =
            vec![unsafe { std::mem::zeroed() }; OFFERED as usize];
        let mut count = 0;
        let [a_layout, b_layout, c_layout] = plan.layouts;
        let [a_align, b_align, c_align] = alignments;
        let aligned = [
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, a_align),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, b_align),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, c_align),
            (Pref::CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, c_align),
        ];
        // SAFETY: the workspace attribute takes a u64, the alignments u32s; the descriptors
        // are live; `offers` holds OFFERED.
        let found = unsafe {
            let mut set = lt::set_matmul_pref_attribute(
                preference,
                Pref::CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                (&workspace as *const u64).cast(),
                std::mem::size_of::<u64>(),
            );
            for (attribute, bytes) in aligned {
                set = set.and_then(|()| {
                    lt::set_matmul_pref_attribute(
                        preference,
                        attribute,
                        (&bytes as *const u32).cast(),
                        std::mem::size_of::<u32>(),
                    )
                });
            }
            set.and_then(|()| {
                sys::cublasLtMatmulAlgoGetHeuristic(
                    self.handle,
                    plan.desc,
                    a_layout,
                    b_layout,
                    c_layout,
                    c_layout,
                    preference,
                    OFFERED,
                    offers.as_mut_ptr(),
                    &mut count,
                )
                .result()
            })
        };
        // SAFETY: created above, used no more.
        unsafe {
            let _ = lt::destroy_matmul_pref(preference);
        }
        found.map_err(lt_error("asking cuBLASLt for algorithms"))?;
        offers.truncate(count.max(0) as usize);
        offers.retain(|o| o.state == sys::cublasStatus_t::CUBLAS_STATUS_SUCCESS);
        Ok(offers)
    }
}
