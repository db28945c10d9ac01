"""Default-mode cost terms of a training plan and the evaluation of one fixed plan.

Device order follows Megatron (TP innermost, then DP, then PP): a TP group is t adjacent
devices, a DP group strides by t, consecutive pipeline stages are t*d devices apart. So
  * the DP all-reduce runs inside a node iff t * d <= devices_per_node, else on inter-node links;
  * pipeline p2p runs inside a node iff t * d * p <= devices_per_node (else the pipeline spans
    nodes and its slowest hop is inter-node).
Terms (each explicit so that a validation can calibrate it):
  stage load per microbatch  = cin + F + R + B + cout, R the recomputed part (full: F;
      selective: the attention core, scheduled on its own; none: 0)
      cin/cout: p2p of the boundary activation (forward in) / its gradient (backward in),
      latency + bytes / (bandwidth * Links.bw_efficiency); 0 at the model's ends; with
      p2p_scatter_gather the payload is 1/t (Narayanan SC'21 Section 4.1); with
      p2p_blocking (DeepSpeed's pipeline engine) both directions of a slot are sent one
      after the other, 2 (cin + cout);
  time per batch (1F1B, v chunks per device; v = 1 is plain 1F1B)
      = (M + (p - 1) / v) * max device load + max over devices of (the DP all-reduce
        + the optimizer step: the device's params, / the group size with ZeRO >= 1, *
        step_bytes_per_param / HBM bw, step_s_per_param);
      an unfused gradient accumulation (grad_accum_bytes_per_param > 0) adds its memory
      pass over the device's params to each microbatch's load ((M - 1) / M of one pass per
      microbatch, or a whole pass with grad_accum_every_microbatch);
      nothing overlaps (Megatron-LM of Narayanan SC'21 / Korthikanti MLSys'23: TP
      all-reduces, p2p and the DP all-reduce all block compute);
  DP all-reduce of a stage's gradients (ring): 2 (d-1)/d * grad bytes / bw + 2 (d-1) latency;
  memory of a device = params * (weight + grad bytes) + optimizer bytes * params (/ d with
      ZeRO-1) + in-flight microbatches * activations (+ the largest layer's
      rematerialised activations when recomputing, Chain.work_bytes); in flight: 1F1B stage at position s keeps min(s, M); interleaved
      (Megatron's warm-up count) rank r keeps min(2 (p-r-1) + (v-1) p + 1, M v) chunk-
      microbatches, i.e. that many / v times the device's per-microbatch activations.
With expert parallelism (ep > 1) the routed experts' part of a stage's params has its own
gradient group (grad_groups: d cp / ep devices, Megatron-Core's expert-data-parallel
group) for the reduction and the ZeRO shards; ring attention (cp > 1) and the EP all-to-
alls are added to the chain first (axes_chain).
The busiest-memory device's memory is also returned split (memory_{part}_bytes, MEMORY_PARTS),
and every pipeline rank's split as `stage_memory` (a list of {part: bytes}).
TP collectives are already inside the layer latencies (scheduler / cost model); the
breakdown reports their share as `tp_s` and does not add them again.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, asdict

import numpy as np

from phaze.hw.arch import Network
from phaze.model.graph import MOE_DISPATCHERS, dividing_eps
# CP_COMM_TYPES: the Megatron-Core --cp-comm-type values context_parallel_chain costs
# (phaze.settings holds the list); its hierarchical "a2a+p2p" is not modelled
from phaze.settings import CP_COMM_TYPE_ALIASES, CP_COMM_TYPES, RECOMPUTE_MODES
from phaze.place.chain import Chain


@dataclass(frozen=True)
class Links:
    """The network as the DP sees it: phaze.hw.arch.Network (the one network type, whose
    defaults these are) plus the achieved fraction of link bandwidth for p2p and the DP
    all-reduce (the cost model's CostParams.link_bw_efficiency, which its TP collectives
    use). Build it with Links.of(network)."""

    devices_per_node: int = Network.devices_per_node
    intra_bw_Bps: float = Network.intra_bw_Bps
    intra_latency_s: float = Network.intra_latency_s
    inter_bw_Bps: float = Network.inter_bw_Bps
    inter_latency_s: float = Network.inter_latency_s
    bw_efficiency: float = 1.0
    levels: tuple = ()               # Network.levels (empty: node + cluster)

    @classmethod
    def of(cls, network: Network | None, bw_efficiency: float = 1.0) -> "Links":
        n = network if network is not None else Network()
        return cls(devices_per_node=n.devices_per_node, intra_bw_Bps=n.intra_bw_Bps,
                   intra_latency_s=n.intra_latency_s, inter_bw_Bps=n.inter_bw_Bps,
                   inter_latency_s=n.inter_latency_s, bw_efficiency=bw_efficiency,
                   levels=n.levels)

    def network(self) -> Network:
        return Network(devices_per_node=self.devices_per_node, intra_bw_Bps=self.intra_bw_Bps,
                       intra_latency_s=self.intra_latency_s, inter_bw_Bps=self.inter_bw_Bps,
                       inter_latency_s=self.inter_latency_s, levels=self.levels)

    def group_levels(self, group_size: int, stride: int = 1) -> list:
        """Network.group_levels (the collectives of phaze.cost.collective take Links too)."""
        return _network_of(self).group_levels(group_size, stride)

    def link(self, level) -> tuple[float, float]:
        """(bw B/s x efficiency, latency s) of network level `level` (0 = inside a node;
        False/True = intra/inter on a two-level network)."""
        e = self.bw_efficiency
        if self.levels:
            _g, bw, lat = self.levels[int(level)]
            return bw * e, lat
        return ((self.inter_bw_Bps * e, self.inter_latency_s) if level
                else (self.intra_bw_Bps * e, self.intra_latency_s))

    def dp_allreduce_coeffs(self, d: int, stride: int, nbytes_per_param: float) -> tuple[float, float]:
        """All-reduce time of the DP group = slope * params + constant: a ring on the
        slowest link (two levels, as before) or hierarchical (levels; collective.py)."""
        if d <= 1:
            return 0.0, 0.0
        if not self.levels:
            bw, lat = self.link(dp_inter(stride, d, self))
            return 2.0 * (d - 1) / d * nbytes_per_param / bw, 2.0 * (d - 1) * lat
        from phaze.cost.collective import hierarchical_coeffs
        a, b = hierarchical_coeffs("all_reduce", d, stride, self.network(), self.bw_efficiency)
        return a * nbytes_per_param, b


@dataclass(frozen=True)
class PlanOptions:
    """Realistic-mode options (defaults in docs/place.md)."""

    optimizer: str = "adam"          # "adam" (mixed precision) or "sgd" (no state)
    zero1: bool = False              # shard optimizer state over the d replicas
    weight_bytes: float = 2.0        # bf16 weights
    grad_bytes: float = 2.0          # bf16 gradients (Megatron's fp32 main grads: 4)
    adam_state_bytes: float = 12.0   # fp32 master copy + 2 fp32 moments: 2+2+12 = 16 B/param
    exact_batch: bool = True         # d * mbs must divide the global batch (Megatron)
    # Optimizer step time: a memory-bound pass over the busiest device's parameters moving
    # this many HBM bytes per parameter (0 = not timed). Mixed-precision Adam reads the
    # fp32 grad, master weight, m and v (16 B), writes master, m, v (12 B) and the bf16
    # weight (2 B): 30 B.
    optimizer_bytes_per_param: float = 0.0
    # Narayanan SC'21 Section 4.1 scatter/gather: a stage boundary sends 1/t of the
    # activation on each of the TP group's t links (then all-gathers it inside the node).
    # Ignored when the chain's activations are already sequence-parallel (sharded by t).
    p2p_scatter_gather: bool = False
    # Pipeline sends and receives as blocking calls issued one after another (DeepSpeed's
    # PipelineEngine: TrainSchedule issues RecvActivation, SendGrad, SendActivation,
    # RecvGrad as separate p2p.send / p2p.recv commands): a stage's activation and gradient
    # transfers of one slot do not overlap, 2 (cin + cout) per microbatch. False: Megatron's
    # 1F1B pairs each send with the opposite receive (batch_isend_irecv), cin + cout.
    p2p_blocking: bool = False
    # --- Megatron-Core / NCCL terms (issue 16). The defaults reproduce the model above
    # (the sweep's default mode); phaze.place.evaluate.MEGATRON_OPTIONS and the framework
    # profiles (FRAMEWORKS) set them as Megatron-LM / NeMo / Megatron-DeepSpeed do.
    # Collectives of DP/CP: "flat" (one ring on the slowest link, one NIC) or "nccl"
    # (phaze.cost.collective.collective_time: NVLink in a node, every NIC between nodes,
    # ring or tree as NCCL picks, groups in Megatron's rank order tp, cp, dp, pp).
    collectives: str = "flat"
    dp_reduce_bytes: float = 0.0     # bytes/element of the gradient reduction (0: grad_bytes)
    distributed_optimizer: bool = False  # Megatron --use-distributed-optimizer: reduce-scatter
    # grads + all-gather params instead of one all-reduce; optimizer state sharded (ZeRO-1)
    zero_stage: int = 0              # 0..3 (DeepSpeed ZeRO / FSDP): 2 shards grads, 3 weights
    overlap_grad_reduce: bool = False    # --overlap-grad-reduce (bucketed, during backward)
    overlap_param_gather: bool = False   # --overlap-param-gather (during the next forward)
    tp_comm_overlap: bool = False        # --tp-comm-overlap (TE userbuffers, chunked)
    overlap_p2p: bool = False            # --overlap-p2p-communication (interleaved 1F1B)
    bucket_params: float = 40e6          # Megatron DDP bucket (parameters) for the overlaps
    cp: int = 1                          # context-parallel size (chain built for seq / cp)
    # Megatron-Core --cp-comm-type (CP_COMM_TYPES): how the attention core reaches the other
    # chunks' keys (context_parallel_chain): "p2p" ring, "allgather" or "a2a" (Ulysses)
    cp_comm_type: str = "p2p"
    # the all-to-all level of "a2a+p2p" (Megatron-Core --hierarchical-context-parallel-sizes
    # [cp_a2a_size, cp / cp_a2a_size]); 0 with the other types
    cp_a2a_size: int = 0
    ep: int = 1                          # expert-parallel size (MoE layers; expert_parallel_chain)
    expert_tp: int = 0                   # expert tensor-parallel size (0 = t; grad_groups)
    # full recomputation as Megatron's --recompute-method / --recompute-num-layers: "uniform"
    # checkpoints the input of every group of n blocks of a chunk and re-runs them all (n = 1:
    # every block's input, the plain "full"); "block" checkpoints and re-runs only the first
    # n blocks of each chunk, the others keep all their activations (_recompute_layers)
    recompute_method: str = "uniform"
    recompute_num_layers: int = 1
    # Megatron-Core --moe-token-dispatcher-type: "alltoall" (one copy per routed slot) or
    # "flex" (DeepEP / HybridEP: one copy per remote node; dedup_dispatch_time)
    moe_token_dispatcher: str = "alltoall"
    # Megatron-Core --moe-expert-capacity-factor (None: dropless) and
    # --moe-pad-expert-input-to-capacity: token dropping, which lives in the graph's routed
    # slots (phaze.model.graph.routed_slots, so in the chain's layer times and a2a_bytes);
    # here so that a plan says what it runs and check_built_for matches the chain to it
    moe_expert_capacity_factor: float | None = None
    moe_pad_expert_input_to_capacity: bool = False
    # --overlap-moe-expert-parallel-comm: a layer's EP all-to-alls of one microbatch run
    # during the other pass's compute of another (combined 1F1B; expert_parallel_chain)
    overlap_moe_expert_parallel_comm: bool = False
    fp8_weight_bytes: float = 0.0        # extra bytes/param of FP8 weight copies (TE)
    # Weight-gradient accumulation over microbatches as its own memory pass (bytes/param
    # per microbatch after the first): eager PyTorch's AccumulateGrad `grad += new` in the
    # gradient dtype (fp16: read 2 + 2, write 2 = 6 B). 0: fused into the dW GEMM
    # (Megatron's --gradient-accumulation-fusion, cuBLAS beta = 1 into main_grad, since 2022).
    grad_accum_bytes_per_param: float = 0.0
    # True: the pass runs after every microbatch, the first included (a copy into a
    # separate fp32 buffer, as DeepSpeed's BF16_Optimizer.update_hp_grads does).
    grad_accum_every_microbatch: bool = False
    # PyTorch DDP (torch.nn.parallel.DistributedDataParallel without gradient_as_bucket_view,
    # Megatron-LM 2021 --DDP-impl torch): the reducer copies each gradient into its bucket
    # (dividing by the world size: read 2, write 2 B) in the autograd hook, on the compute
    # stream, and the reduced bucket back into .grad at the end of the backward (2 + 2 B):
    # HBM bytes per parameter per batch, charged with the DP sync when d > 1 (0: none).
    ddp_bucket_copy_bytes_per_param: float = 0.0
    # PyTorch DDP's buckets follow gradient-ready order: the embedding's gradient comes last
    # in the backward (a tied word embedding's two uses are summed before its hook fires),
    # so the last bucket to reduce - the exposed one - holds at least the prologue's params.
    # Megatron-Core's DDP alike: it fills buckets walking the parameters in reverse
    # (ParamAndGradBuffer, `for param in params[::-1]`, core_v0.8.0), so the word
    # embedding, the first parameter, sits in the last bucket to reduce and in the first
    # to all-gather (overlap_param_gather waits for it before the first layer).
    last_bucket_holds_prologue: bool = False
    # Fraction of the compute rate an overlapped DP collective takes while it runs (the SMs
    # its NCCL channels occupy; phaze.place.evaluate sets them from CostParams.nccl_channels
    # and nccl_net_channels on GPU presets): a collective hidden behind compute for C
    # seconds still adds share x C (the same contention as async_tp_exposed). comm_sm_share:
    # a group inside one node (NVLink rings); a group across nodes runs one ring per NIC
    # its members in a node use, doubled: comm_sm_share_net per member in a node, at most
    # comm_sm_share. 0: overlap is free.
    comm_sm_share: float = 0.0
    comm_sm_share_net: float = 0.0
    # The same for the flex dispatcher's kernels (DeepEP / HybridEP) while an EP all-to-all
    # overlaps compute (overlap_moe_expert_parallel_comm): the SMs they run on
    # (CostParams.flex_dispatch_sms) over the chip's. The alltoall dispatcher's NCCL
    # all-to-all takes comm_sm_share / comm_sm_share_net as a DP collective does.
    flex_sm_share: float = 0.0
    # Megatron's async_tensor_model_parallel_allreduce (Megatron-LM 2021-09 on, default on;
    # Transformer Engine's linears alike): the backward TP collective of a column-parallel
    # linear runs during its weight GEMM. Applied to the layer latencies by
    # phaze.place.evaluate.evaluate_model (async_tp_exposed); userbuffers (tp_comm_overlap)
    # take its place when on. No effect on evaluate_plan itself.
    async_tensor_model_parallel_allreduce: bool = False

    def __post_init__(self):
        object.__setattr__(self, "cp_comm_type",
                           CP_COMM_TYPE_ALIASES.get(self.cp_comm_type, self.cp_comm_type))
        if self.cp_comm_type not in CP_COMM_TYPES:
            raise ValueError(f"PlanOptions.cp_comm_type must be one of {CP_COMM_TYPES}, got "
                             f"{self.cp_comm_type!r}")
        if self.cp_comm_type == "a2a+p2p" and self.cp > 1 and not (
                self.cp_a2a_size >= 1 and self.cp % self.cp_a2a_size == 0):
            raise ValueError(f"cp comm type a2a+p2p: its all-to-all level cp_a2a_size = "
                             f"{self.cp_a2a_size} must divide cp = {self.cp}")
        for f in ("comm_sm_share", "comm_sm_share_net", "flex_sm_share"):
            v = getattr(self, f)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"PlanOptions.{f} = {v} must be a fraction of the SMs in [0, 1]")

    def opt_bytes(self) -> float:
        return self.adam_state_bytes if self.optimizer == "adam" else 0.0

    def step_bytes_per_param(self) -> float:
        """HBM bytes per parameter the optimizer step moves: optimizer_bytes_per_param,
        which the profiles count for Adam; SGD keeps no state, so Adam's passes over its
        master weight, m and v (2 1/3 passes of adam_state_bytes: phaze.place.evaluate.
        dtype_options) become one read and one write of the weight."""
        if self.optimizer == "adam" or self.optimizer_bytes_per_param <= 0:
            return self.optimizer_bytes_per_param
        return max(0.0, self.optimizer_bytes_per_param - 7.0 / 3.0 * self.adam_state_bytes
                   + 2.0 * self.weight_bytes)

    def static_bytes_per_param(self, d: int, expert: bool = False, t: int = 1) -> float:
        """Weight + gradient + optimizer bytes a device keeps per parameter of its shard,
        for a dense parameter (sharded, per ZeRO stage, over the d x cp gradient group) or,
        `expert`, a routed-expert parameter (over the expert-data-parallel group of
        t d cp / (expert_tp ep) devices; grad_groups; `t` matters only with expert_tp)."""
        n = grad_groups(self, t, d)[1 if expert else 0][0]
        if self.extended():
            z = zero_stage_of(self)
            return (self.weight_bytes / (n if z >= 3 else 1) + self.fp8_weight_bytes
                    + self.grad_bytes / (n if z >= 2 else 1) + self.opt_bytes() / (n if z >= 1 else 1))
        return self.weight_bytes + self.grad_bytes + self.opt_bytes() / (n if self.zero1 else 1)

    def extended(self) -> bool:
        """True when any Megatron-Core/NCCL term differs from the plain model."""
        return (self.collectives != "flat" or self.dp_reduce_bytes > 0 or self.distributed_optimizer
                or self.zero_stage > 0 or self.overlap_grad_reduce or self.overlap_param_gather
                or self.tp_comm_overlap or self.overlap_p2p or self.cp > 1 or self.fp8_weight_bytes > 0)


def grad_groups(options: PlanOptions, t: int, d: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((size, stride), (size, stride)) of the groups that reduce (and with ZeRO shard) the
    dense parameters' and the routed experts' gradients, in devices. Dense: d x cp devices
    stride t (Megatron's rank order tp, cp, dp, pp). Routed experts: the expert-data-
    parallel group of t d cp / (et ep) devices stride et ep, et = options.expert_tp or t
    (Megatron-Core parallel_state.initialize_model_parallel: the expert rank generator has
    tp = expert tensor-parallel size, ep, dp = world / (et ep pp), cp folded in, order
    tp-ep-dp-pp; DistributedDataParallel puts expert parameters in their own buffers over
    that group, and the distributed optimizer shards them over it). ep = 1 and et = t: the
    same group as the dense parameters."""
    g = d * options.cp
    et = options.expert_tp or t
    return (g, t), (t * g // (et * options.ep), et * options.ep)


def expert_grid_error(options: PlanOptions, t: int, d: int) -> str:
    """Why the expert grid (et x ep x expert-DP, Megatron-Core) does not tile the t x cp x d
    devices of a pipeline stage; "" when it does."""
    et = options.expert_tp or t
    if (t * d * options.cp) % (et * options.ep):
        if et == t:
            return f"ep {options.ep} must divide d x cp = {d * options.cp}"
        return (f"ep {options.ep} x expert_tp {et} must divide t x d x cp = "
                f"{t * d * options.cp}")
    return ""


@functools.lru_cache(maxsize=64)
def _network_of(links: Links) -> Network:
    return links.network()


def p2p_time(nbytes, bw: float, lat: float):
    return np.where(np.asarray(nbytes) > 0, lat + np.asarray(nbytes) / bw, 0.0)


def allreduce_time(nbytes, n: int, bw: float, lat: float):
    """Ring all-reduce of nbytes over n devices."""
    if n <= 1:
        return np.zeros_like(np.asarray(nbytes, dtype=float))
    return 2.0 * (n - 1) / n * np.asarray(nbytes, dtype=float) / bw + 2.0 * (n - 1) * lat


def pipeline_inter(t: int, d: int, p: int, links: Links) -> bool:
    return t * d * p > links.devices_per_node


def pipeline_level(t: int, d: int, p, links: Links):
    """Level of the pipeline's slowest hop (numpy-aware in p): the innermost level holding
    all t d p devices of one pipeline's span (stages t d devices apart, Megatron's order).
    Two-level networks: pipeline_inter (False/True = 0/1)."""
    if not links.levels:
        return pipeline_inter(t, d, p, links)
    span = t * d * np.asarray(p)
    lv = np.full(np.shape(span), len(links.levels) - 1)
    for i in range(len(links.levels) - 2, -1, -1):
        g = links.levels[i][0]
        lv = np.where(span <= g, i, lv)
    return lv if np.ndim(lv) else int(lv)


def hop_level(stride: int, a: int, b: int, links: Links) -> int:
    """Network level of a pipeline hop between pipeline ranks a < b on a network with
    levels (rank r holds devices [r stride, (r + 1) stride), stride = t cp d, Megatron's
    rank order tp, cp, dp, pp): device x of rank a talks to device x of rank b, and the
    slowest pair gates the hop, so it costs the innermost level whose aligned group holds
    both ranks' whole device blocks, i.e. [a stride, (b + 1) stride)."""
    lo, hi = a * stride, (b + 1) * stride - 1
    for i, (g, _bw, _lat) in enumerate(links.levels):
        if g == 0 or lo // g == hi // g:
            return i
    return len(links.levels) - 1


def hop_pattern(stride: int, links: Links) -> tuple[int, tuple]:
    """(q, levels): the level of the hop into pipeline rank k (from rank k - 1, k >= 1) is
    levels[k % q] (hop_level). Periodic: shifting k by q moves both ranks by a multiple of
    every finite level's group, q = lcm over levels of g / gcd(g, stride)."""
    q = 1
    for g, _bw, _lat in links.levels:
        if g:
            q = math.lcm(q, g // math.gcd(g, stride))
    return q, tuple(hop_level(stride, (r or q) - 1, r or q, links) for r in range(q))


def dp_inter(t: int, d: int, links: Links) -> bool:
    return t * d > links.devices_per_node


def uniform_stages(chain: Chain, chunks: int) -> list[tuple[int, int]]:
    """Megatron's split: blocks evenly over `chunks`, prologue in the first, epilogue in the
    last chunk. Raises ValueError when the blocks do not divide evenly."""
    b0, b1 = chain.block_span()
    nb = b1 - b0
    if chunks < 1 or nb % chunks or (nb == 0 and chunks > 1):
        ok = [k for k in range(1, nb + 1) if nb % k == 0]
        raise ValueError(f"{nb} blocks do not split evenly into pp x interleave = {chunks} "
                         f"chunks (divisors of {nb}: {', '.join(map(str, ok))})")
    per = nb // chunks
    bounds = [b0 + k * per for k in range(chunks + 1)]
    bounds[0], bounds[-1] = 0, chain.n
    return list(zip(bounds[:-1], bounds[1:]))


def inflight(p: int, v: int, M: int) -> np.ndarray:
    """Microbatches whose activations rank r = 0..p-1 holds at its peak (in microbatch
    units of the device's whole activations)."""
    r = np.arange(p)
    if v == 1:
        return np.minimum(p - r, M).astype(float)
    return np.minimum(2 * (p - r - 1) + (v - 1) * p + 1, M * v) / v


# The terms of time_per_batch_s in evaluate_plan's dict; they sum to it (tp_s is the TP
# collectives' share of the layer loads, compute_s the rest).
BREAKDOWN_KEYS = ("compute_s", "bubble_s", "p2p_s", "dp_sync_s", "tp_s", "optimizer_s",
                  "grad_accum_s")


def adam_step_bytes(grad_bytes: float, adam_state_bytes: float, weight_bytes: float) -> float:
    """HBM bytes per parameter of a mixed-precision Adam step (PlanOptions.
    optimizer_bytes_per_param): the gradient read for its norm, read by Adam and zeroed (3
    passes of grad_bytes), Adam's read and write of the master weight, m and v plus the
    cast's second read of the master weight (2 1/3 passes of adam_state_bytes) and the
    model weight's write. Megatron's fp32 grads and state, bf16 weights: 12 + 28 + 2 = 42
    (phaze.place.evaluate.MEGATRON_OPTIONS); bf16 grads: 36."""
    return 3.0 * grad_bytes + (2.0 + 1.0 / 3.0) * adam_state_bytes + weight_bytes


def step_s_per_param(options: PlanOptions, hbm_bw_Bps: float, t: int, d: int,
                     expert: bool = False) -> float:
    """Seconds of optimizer step per parameter a device holds (dense, or `expert`: routed
    experts'): options.step_bytes_per_param() / hbm_bw_Bps, divided with ZeRO >= 1 (the
    distributed optimizer, zero1) by the group that shards the state (grad_groups: d x cp
    dense, the expert-data-parallel group for experts), each rank stepping its shard. 0
    when the step is not timed (optimizer_bytes_per_param 0 or no HBM bandwidth given)."""
    if options.optimizer_bytes_per_param <= 0 or hbm_bw_Bps <= 0:
        return 0.0
    n = grad_groups(options, t, d)[1 if expert else 0][0] if zero_stage_of(options) >= 1 else 1
    return options.step_bytes_per_param() / hbm_bw_Bps / n


def evaluate_plan(chain: Chain, p: int, d: int, batch: int, recompute: str = "none",
                  interleave: int = 1, *, hbm_bytes: float = math.inf, links: Links | None = None,
                  options: PlanOptions | None = None, peak_flops: float = 0.0,
                  stages: list[tuple[int, int]] | None = None, t: int | None = None,
                  mbs: int | None = None, hbm_bw_Bps: float = 0.0,
                  allow_empty_stages: bool = False) -> dict:
    """Time, breakdown and memory of one plan. `stages` = p * interleave contiguous chunks
    [i, j) covering the chain (chunk c on device c % p); default: Megatron's uniform split.
    `allow_empty_stages`: a chunk may be empty, [a, a) (a Megatron-Core pipeline layout's
    empty chunk: it only passes the activations on).
    `hbm_bw_Bps` (achieved HBM bandwidth) times the optimizer step when
    options.optimizer_bytes_per_param > 0 (step_s_per_param), charged with the DP sync of
    the same device (the largest sum: dp_sync_s + optimizer_s).
    Returns the plan dict (feasible False with a reason when it does not fit)."""
    links = links or Links()
    options = options or PlanOptions()
    if t is not None and t != chain.t:
        raise ValueError(f"chain is for t = {chain.t}, not {t}")
    if mbs is not None and mbs != chain.mbs:
        raise ValueError(f"chain is for mbs = {chain.mbs}, not {mbs}")
    if recompute not in RECOMPUTE_MODES:
        raise ValueError(f"recompute must be one of {RECOMPUTE_MODES}, got {recompute!r}")
    v = interleave
    t, mbs = chain.t, chain.mbs
    stages = _checked_stages(chain, p * v, stages, allow_empty_stages)
    base = _base(chain, p, d, t, mbs, batch, recompute, v, stages)
    base.update(ep=options.ep, cp=options.cp, zero_stage=zero_stage_of(options))
    check_built_for(chain, options)      # a refusal, not an infeasible plan: before the grid
    grid = expert_grid_error(options, t, d)
    if grid:
        return {**base, "feasible": False, "reason": grid}
    chain = axes_chain(chain, links, options)
    if options.exact_batch and batch % (mbs * d):
        return {**base, "feasible": False, "reason": f"batch {batch} not divisible by mbs*d"}
    M = -(-batch // (mbs * d))
    if v > 1 and M % p:
        return {**base, "feasible": False, "reason": "interleaving needs M divisible by p"}

    layout = _recompute_layers(chain, recompute, stages, options)   # re-run, kept, working
    dev_load, dev_comp, dev_tp, dev_p2p, dev_P, dev_A, dev_work, dev_Pe, fill = _per_device(
        chain, p, v, d, recompute, stages, links, options, layout)
    dev_Pd = dev_P - dev_Pe
    accum = np.zeros(p)
    if options.grad_accum_bytes_per_param > 0 and hbm_bw_Bps > 0:
        # each microbatch's backward (but the first, unless every) adds its dW into the
        # gradient buffer
        share = 1.0 if options.grad_accum_every_microbatch else (M - 1) / M
        accum = dev_P * options.grad_accum_bytes_per_param / hbm_bw_Bps * share
        dev_load = dev_load + accum
    mem = dev_Pd * options.static_bytes_per_param(d) + \
        dev_Pe * options.static_bytes_per_param(d, expert=True, t=t) + inflight(p, v, M) * dev_A + dev_work
    parts = memory_parts(dev_P, inflight(p, v, M) * dev_A, dev_work, d, options, dev_Pe, t=t)
    (_g, _s), (ge, se) = grad_groups(options, t, d)
    gb = options.grad_bytes
    if links.levels:
        al, be = links.dp_allreduce_coeffs(d, t, gb)
        ale, bee = links.dp_allreduce_coeffs(ge, se, gb)
        ar = np.where(d > 1, al * dev_Pd + be, 0.0) * np.ones(p) + \
            np.where(dev_Pe > 0, ale * dev_Pe + bee, 0.0)
    else:
        ar = allreduce_time(dev_Pd * gb, d, *links.link(dp_inter(t, d, links))) + \
            np.where(dev_Pe > 0, allreduce_time(dev_Pe * gb, ge, *links.link(dp_inter(se, ge, links))),
                     0.0)
    fsdp = np.zeros(p)
    # interleaved 1F1B with overlapped p2p: the transfers stay on the critical path of the
    # pipeline's fill and drain only (interleaved_p2p_fill_s; None: not overlapped)
    if not (options.extended() and options.overlap_p2p and v > 1):
        fill = None
    if options.extended():
        dev = np.arange(p * v) % p
        dev_load, dev_tp, dev_p2p, ar, fsdp = extended_terms(
            chain, options, links, t, d, p, v, stages, dev, dev_P, dev_comp, dev_tp, dev_p2p,
            dev_Pe, p2p_fill_s=fill)
        dev_load = dev_load + accum
    if options.ddp_bucket_copy_bytes_per_param > 0 and hbm_bw_Bps > 0 and d * options.cp > 1:
        ar = ar + dev_P * options.ddp_bucket_copy_bytes_per_param / hbm_bw_Bps
    b = int(np.argmax(dev_load))
    Lmax = float(dev_load[b])
    bubble = (p - 1) / v * Lmax
    # the step follows the device's own reduction: the DP charges their sum per stage
    step = dev_Pd * step_s_per_param(options, hbm_bw_Bps, t, d) + \
        dev_Pe * step_s_per_param(options, hbm_bw_Bps, t, d, expert=True)
    ar = ar * np.ones(p)
    sync_rank = int(np.argmax(ar + step))
    opt_s = float(step[sync_rank])
    p2p_fill = fill or 0.0
    time_s = M * Lmax + bubble + p2p_fill + float(ar[sync_rank]) + opt_s
    out = {**base, "M": M, "time_per_batch_s": time_s,
           "samples_per_s": batch / time_s, "tokens_per_s": batch * chain.seq / time_s,
           "memory_per_device_bytes": float(mem.max()),
           **{f"memory_{k}_bytes": float(v[int(np.argmax(mem))]) for k, v in parts.items()},
           "stage_memory": [{k: float(v[r]) for k, v in parts.items()} for r in range(p)],
           "compute_s": M * float(dev_comp[b]), "bubble_s": bubble,
           "p2p_s": M * float(dev_p2p[b]) + p2p_fill, "dp_sync_s": float(ar[sync_rank]),
           "tp_s": M * float(dev_tp[b]), "optimizer_s": opt_s,
           "grad_accum_s": M * float(accum[b]),
           "feasible": bool(mem.max() <= hbm_bytes)}
    if options.extended():      # FSDP's per-microbatch exposed gathers count as DP sync
        out["dp_sync_s"] += M * float(fsdp[b])
        out["devices"] = p * d * t * options.cp
    out.update(_flop_metrics(chain, recompute, batch, p * t * d * options.cp, options.cp,
                             time_s, peak_flops,
                             layout[0]))
    # parts of compute_s the axes added (the busiest device, forward + backward): the CP
    # ring's further steps and the EP all-to-alls; informational, not breakdown terms
    dev = np.arange(p * v) % p
    for key in ("cp_ring_s", "ep_a2a_s"):
        per = np.asarray(chain.extra.get(key, np.zeros(chain.n)), dtype=float)
        cs = np.concatenate(([0.0], np.cumsum(per)))
        chunk = np.array([cs[hi] - cs[lo] for lo, hi in stages])
        out[key] = M * float(np.bincount(dev, chunk, minlength=p)[b])
    if not out["feasible"]:
        out["reason"] = f"needs {mem.max():.4g} B per device > HBM {hbm_bytes:.4g} B"
    return out


def _checked_stages(chain: Chain, chunks: int, stages, allow_empty: bool = False):
    """`stages`, or Megatron's uniform split; ValueError unless they are `chunks` non-empty
    (or with allow_empty possibly empty) contiguous ranges covering the chain."""
    stages = uniform_stages(chain, chunks) if stages is None else stages
    check_stages(stages, chunks, chain.n, allow_empty)
    return stages


def check_stages(stages, chunks: int, n: int, allow_empty: bool = False) -> None:
    """ValueError naming the first fault of `stages` as `chunks` non-empty contiguous
    [start, end) ranges covering layers 0..n (count, start, gap or overlap, empty, end).
    allow_empty: a range may be empty ([a, a)), never reversed."""
    problem = _stages_problem(stages, chunks, n, allow_empty)
    if problem:
        what = "" if allow_empty else "non-empty "
        raise ValueError(f"stages must be p * interleave = {chunks} {what}contiguous "
                         f"[start, end) ranges covering layers 0..{n}: {problem}")


def _stages_problem(stages, chunks: int, n: int, allow_empty: bool = False) -> str | None:
    if len(stages) != chunks:
        return f"{len(stages)} ranges given, {chunks} needed"
    for i, (a, b) in enumerate(stages):
        if i == 0 and a != 0:
            return f"the first range starts at {a}, not 0"
        if i and a != stages[i - 1][1]:
            return f"range {i} starts at {a}, not where range {i - 1} ends ({stages[i - 1][1]})"
        if a > b or (a == b and not allow_empty):
            return f"range {i} [{a}, {b}) is {'reversed' if a > b else 'empty'}"
    if stages[-1][1] != n:
        return f"the last range ends at {stages[-1][1]}, not at the {n} layers' end"
    return None


RECOMPUTE_METHODS = ("uniform", "block")


def _recompute_layers(chain, recompute, stages, options):
    """(re-run 1/0, activation bytes kept, working bytes) per chain layer for `recompute`
    and Megatron's recompute method (PlanOptions.recompute_method / _num_layers; n below),
    each pipeline chunk of `stages` on its own (Megatron-Core: each model chunk is a
    TransformerBlock with its own _checkpointed_forward). "block": the first n blocks of a
    chunk keep their input and are re-run, the others keep everything and are not.
    "uniform": every group of n consecutive blocks keeps its first block's input and is
    re-run whole, its n blocks' activations materialised at once (the working bytes).
    n = 1 uniform (or other modes) is the chain's own account. Prologue and epilogue are
    never re-run (Chain.block_mask)."""
    n_layers = options.recompute_num_layers
    method = options.recompute_method
    if method not in RECOMPUTE_METHODS:
        raise ValueError(f"recompute_method must be one of {RECOMPUTE_METHODS}, got {method!r}")
    if isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1:
        raise ValueError(f"recompute_num_layers must be a positive integer, got {n_layers!r}")
    rerun = np.ones(chain.n)
    act = np.array(chain.act_bytes(recompute), dtype=float)
    wb = np.array(chain.work_bytes(recompute), dtype=float)
    if recompute != "full" or (method == "uniform" and n_layers == 1):
        return rerun, act, wb
    block = chain.block_mask
    for a, b in stages:
        idx = [j for j in range(a, b) if block[j]]
        for pos, j in enumerate(idx):
            if method == "block" and pos >= n_layers:      # kept whole, not re-run
                rerun[j], act[j], wb[j] = 0.0, chain.act_none_bytes[j], 0.0
            elif method == "uniform":
                first = pos % n_layers == 0
                act[j] = chain.act_full_bytes[j] if first else 0.0
                group = idx[pos - pos % n_layers: pos - pos % n_layers + n_layers]
                wb[j] = float(sum(chain.act_none_bytes[g] for g in group)) \
                    - float(chain.act_full_bytes[group[0]])
    return rerun, act, wb


def _per_device(chain, p, v, d, recompute, stages, links, options, layout):
    """Per pipeline rank (chunk c on rank c % p), per microbatch: load (compute with its
    recomputation, TP collectives, p2p), compute without TP, TP, p2p; and params,
    activations kept per microbatch, the recomputation working buffer and the routed-
    expert part of the params (0 unless options.ep > 1 or a folded expert grid:
    grad_groups). `layout`: per layer what recomputation re-runs, keeps and rematerialises
    (_recompute_layers)."""
    t, n = chain.t, chain.n
    st = np.array(stages)
    lo, hi = st[:, 0], st[:, 1]
    cs = lambda x: np.concatenate(([0.0], np.cumsum(x)))  # noqa: E731
    Fp, Bp, Pp = cs(chain.fwd_s), cs(chain.bwd_s), cs(chain.param_count)
    rerun, act, wb = layout
    Rp = cs(chain.recompute_s(recompute) * rerun)
    TFp, TBp = cs(chain.tp_fwd_s), cs(chain.tp_bwd_s)
    Ap = cs(act)
    F, B, P, R = Fp[hi] - Fp[lo], Bp[hi] - Bp[lo], Pp[hi] - Pp[lo], Rp[hi] - Rp[lo]
    TP = TFp[hi] - TFp[lo] + TBp[hi] - TBp[lo]
    if recompute == "full":        # the re-run blocks repeat their TP collectives
        TRp = cs(chain.tp_fwd_s * chain.block_mask * rerun)
        TP = TP + TRp[hi] - TRp[lo]
    out_b = chain.out_bytes
    if options.p2p_scatter_gather and not chain.extra.get("sequence_parallel", False):
        out_b = out_b / t
    chunks = len(stages)
    if links.levels:     # every hop at the level it crosses (chunk c on rank c % p)
        stride = t * options.cp * d
        lv = [hop_level(stride, min((c - 1) % p, c % p), max((c - 1) % p, c % p), links)
              if c % p != (c - 1) % p else 0 for c in range(chunks + 1)]
        link_in = [links.link(lv[c]) for c in range(chunks)]        # hop into chunk c
        link_out = [links.link(lv[c + 1]) for c in range(chunks)]   # hop out of chunk c
    else:                # two levels: the pipeline's slowest hop for every hop
        one = links.link(pipeline_level(t * options.cp, d, p, links))
        link_in = link_out = [one] * chunks
    cin = np.array([float(p2p_time(out_b[lo[c] - 1], *link_in[c])) if lo[c] > 0 else 0.0
                    for c in range(chunks)])
    cout = np.array([float(p2p_time(out_b[hi[c] - 1], *link_out[c])) if hi[c] < n else 0.0
                     for c in range(chunks)])
    if options.p2p_blocking:    # the gradient transfers after the activation ones
        cin, cout = 2.0 * cin, 2.0 * cout
    comp = F + B + R
    load = comp + cin + cout
    work = np.array([wb[a:b].max() if b > a else 0.0 for a, b in stages])
    dev = np.arange(p * v) % p
    dev_load = np.bincount(dev, load, minlength=p)
    dev_comp = np.bincount(dev, comp - TP, minlength=p)
    dev_tp = np.bincount(dev, TP, minlength=p)
    dev_p2p = np.bincount(dev, cin + cout, minlength=p)
    dev_P = np.bincount(dev, P, minlength=p)
    if p == 1:      # embedding and tied head on one device: one copy (Megatron)
        dev_P = dev_P - chain.shared_param_count
    dev_A = np.bincount(dev, Ap[hi] - Ap[lo], minlength=p)
    dev_work = np.array([work[dev == r].max() for r in range(p)])
    # the routed experts have their own gradient group when ep > 1 or when their TP size
    # differs from t (grad_groups: t d cp / (et ep) devices)
    folded = (options.expert_tp or t) != t
    Ep = cs(chain.expert_param_count) if (options.ep > 1 or folded) else np.zeros(n + 1)
    dev_Pe = np.bincount(dev, Ep[hi] - Ep[lo], minlength=p)
    fill = interleaved_p2p_fill_s(cin, cout, F) if p > 1 else None
    return dev_load, dev_comp, dev_tp, dev_p2p, dev_P, dev_A, dev_work, dev_Pe, fill


def interleaved_p2p_fill_s(cin, cout, fwd_s):
    """Seconds the pipeline's point-to-point transfers add to an iteration of Megatron-Core's
    interleaved 1F1B schedule with --overlap-p2p-communication (asynchronous isend / irecv;
    schedules.forward_backward_pipelining_with_interleaving), or None when the closed form
    does not hold. Per chunk c (arrays over the p v chunks, seconds of one microbatch): cin /
    cout the transfer into / out of it, fwd_s its forward compute.
    The steady state hides every transfer behind the other microbatches' chunks (the
    schedule's warm-up keeps 2 (p - rank - 1) + (v - 1) p forwards in flight), but the first
    microbatch's forward crosses the p v - 1 chunk boundaries one after the other, and its
    gradient crosses them back: the fill and drain each wait for every hop once, sum(cin +
    cout) in all (= 2 sum of the hops), whatever the number of microbatches. Exact against a
    step-by-step simulation of the schedule (tests/test_place_megatron_terms.py) while no
    transfer takes longer than the forward of a chunk it links; beyond that the steady state
    stalls too and None is returned (the caller then charges the transfers as not
    overlapped, an upper bound)."""
    cin, cout, fwd_s = (np.asarray(x, dtype=float) for x in (cin, cout, fwd_s))
    if np.any(cin > fwd_s) or np.any(cout > fwd_s):
        return None
    return float(np.sum(cin + cout))


def _flop_metrics(chain, recompute, batch, devices, cp, time_s, peak_flops, rerun=None) -> dict:
    """Model FLOPs from the graph (per device x a replica's devices x microbatches), MFU
    and TFLOP/s per device from them; hardware FLOPs and HFU add what recomputation runs
    again (`rerun`: 1/0 per layer for full recomputation, _recompute_layers) and what token
    dropping computes beyond the model's slots (chain.extra["routed_flops_excess"], < 0
    when it drops) and the scores a fused attention backward re-computes
    (chain.extra["core_rerun_flops"]: model FLOPs count a core's backward as twice its
    forward whatever the kernel, as Megatron's num_floating_point_operations), less the
    score blocks a fused causal attention kernel skips (chain.extra["core_skipped_flops"]):
    model FLOPs count the whole queries x keys rectangle (Narayanan et al. 2021 Eq. 3,
    PaLM's MFU), so MFU may pass what the kernels execute, HFU may not."""
    n_mb = batch / chain.mbs
    flops = float(chain.flops_fwd.sum() + chain.flops_bwd.sum()) * chain.t * cp * n_mb
    full = chain.block_mask * (1.0 if rerun is None else rerun)
    skip = np.asarray(chain.extra.get("core_skipped_flops", np.zeros((chain.n, 3))), dtype=float)
    redo = ({"none": 0.0, "selective": float(chain.flops_recompute_selective.sum() - skip[:, 2].sum()),
             "full": float((chain.flops_fwd * full).sum() - (skip[:, 0] * full).sum())
             }[recompute] + float(chain.extra.get("routed_flops_excess", 0.0))
            + float(np.sum(chain.extra.get("core_rerun_flops", 0.0)))
            - float(skip[:, :2].sum())) * chain.t * cp * n_mb
    ok = peak_flops > 0
    mfu = flops / (time_s * devices * peak_flops) if ok else None
    return {"model_flops": flops, "hardware_flops": flops + redo, "mfu": mfu,
            "hfu": (flops + redo) / (time_s * devices * peak_flops) if ok else None,
            "tflops_per_device": mfu * peak_flops / 1e12 if ok else None}


MEMORY_PARTS = ("weights", "grads", "optimizer", "activations", "buffers")


def memory_parts(dev_P, dev_act, dev_work, d: int, options: PlanOptions, dev_Pe=None,
                 t: int = 1) -> dict:
    """Memory of each pipeline rank split into MEMORY_PARTS (bytes; arrays over ranks):
    weights, gradients, optimizer state (/ d with ZeRO-1), activations kept for the
    in-flight microbatches, and the recomputation working buffer. Their sum is the
    rank's memory (up to rounding). `dev_Pe`: the routed-expert part of dev_P, sharded
    over the expert-data-parallel group instead (grad_groups, for TP width `t`; None: none)."""
    dev_Pe = np.zeros_like(np.asarray(dev_P, dtype=float)) if dev_Pe is None else dev_Pe
    out = {"weights": 0.0, "grads": 0.0, "optimizer": 0.0}
    for P, (n, _s) in zip((dev_P - dev_Pe, dev_Pe), grad_groups(options, t, d)):
        opt = options.opt_bytes() / (n if options.zero1 else 1)
        wb, gb = options.weight_bytes, options.grad_bytes
        if options.extended():      # ZeRO-1/2/3 shard over the group
            z = zero_stage_of(options)
            wb = wb / (n if z >= 3 else 1) + options.fp8_weight_bytes
            gb = gb / (n if z >= 2 else 1)
            opt = options.opt_bytes() / (n if z >= 1 else 1)
        out["weights"] = out["weights"] + P * wb
        out["grads"] = out["grads"] + P * gb
        out["optimizer"] = out["optimizer"] + P * opt
    return {**out, "activations": np.asarray(dev_act, dtype=float),
            "buffers": np.asarray(dev_work, dtype=float)}


def nccl_sm_share(options: PlanOptions, links: Links, n: int, stride: int) -> float:
    """Fraction of the SMs an NCCL collective over n devices `stride` apart takes while it
    overlaps compute: options.comm_sm_share for a group inside one node (NVLink rings);
    across nodes, comm_sm_share_net per member in a node (one ring per NIC used), at most
    comm_sm_share."""
    dpn = links.levels[0][0] if links.levels else links.devices_per_node
    if n * stride <= dpn:
        return options.comm_sm_share
    return min(options.comm_sm_share,
               options.comm_sm_share_net * max(1, min(n, dpn // stride)))


def extended_terms(chain, options, links, t, d, p, v, stages, dev, dev_P, dev_comp, dev_tp, dev_p2p,
                   dev_Pe=None, p2p_fill_s=None):
    """Megatron-Core / NCCL terms (PlanOptions.extended()): returns (device load per
    microbatch, exposed TP, exposed p2p, DP sync per batch, FSDP exposed per microbatch),
    each per device. Groups in Megatron's rank order tp, cp, dp, pp: the gradient group is
    dp x cp devices, stride t; the routed experts' part `dev_Pe` of dev_P (ep > 1) runs
    the same collectives over the expert-data-parallel group (grad_groups), each group's
    collective costing nothing when it has no bytes.
      reduction: all-reduce of the grads (dp_reduce_bytes per element), or with the
        distributed optimizer / ZeRO >= 1 a reduce-scatter of the grads + an all-gather of
        the bf16 weights; ZeRO-2 reduce-scatters every microbatch, ZeRO-3 / FSDP also
        all-gathers the weights in the forward and again in the backward of every
        microbatch (prefetched: exposed = max(one layer's share, comm - compute));
      overlap_grad_reduce: buckets reduce while the last microbatch's backward runs:
        exposed = max(last bucket, reduction - one microbatch's backward); interleaved,
        each chunk's reduction also hides behind the later chunks' cooldown backwards
        (`overlap_exposed`);
      overlap_param_gather: the all-gather hides behind the next forward, likewise;
      tp_comm_overlap: TP collectives split in t chunks pipelined with the GEMMs (TE
        userbuffers): one chunk stays exposed, TP / t;
      overlap_p2p: with the interleaved schedule (v > 1) the transfers hide behind the
        other microbatches' chunks; the pipeline's fill and drain still wait for each hop
        once (`p2p_fill_s`, interleaved_p2p_fill_s, charged per iteration by evaluate_plan,
        which passes None when nothing is hidden: no overlap, v = 1, or a transfer that
        outlasts a chunk's forward)."""
    from phaze.cost.collective import all_gather_time, allreduce_time as ar_time, \
        reduce_scatter_time

    o = options
    topo = o.collectives
    (g, stride), (ge, se) = grad_groups(o, t, d)
    dev_Pe = np.zeros(p) if dev_Pe is None else dev_Pe
    rb = o.dp_reduce_bytes or o.grad_bytes
    z = zero_stage_of(o)
    kw = dict(topology=topo, bw_efficiency=links.bw_efficiency)
    net = links
    tp_exp = dev_tp / t if o.tp_comm_overlap else dev_tp
    p2p_exp = np.zeros_like(dev_p2p) if p2p_fill_s is not None else dev_p2p
    fb = np.bincount(dev, [chain.fwd_s[a:b_].sum() for a, b_ in stages], minlength=p)
    bb = np.bincount(dev, [chain.bwd_s[a:b_].sum() for a, b_ in stages], minlength=p)
    blocks = np.maximum(np.bincount(dev, [b_ - a for a, b_ in stages], minlength=p), 1)
    sync = np.zeros(p)
    fsdp = np.zeros(p)
    pro = np.array([float(chain.param_count[a:b_][np.array(chain.kinds[a:b_]) == "prologue"].sum())
                    for a, b_ in stages])
    dev_pro = np.bincount(dev, pro, minlength=p)     # the prologue's params per rank

    def sm_share(n, s):
        return nccl_sm_share(o, links, n, s)

    for r in range(p):
        P, Pe = float(dev_P[r]), float(dev_Pe[r])
        last = max(o.bucket_params, dev_pro[r]) if o.last_bucket_holds_prologue else o.bucket_params
        frac = min(1.0, last / P) if P > 0 else 1.0
        groups = ((P - Pe, g, stride), (Pe, ge, se))
        # one share for the rank's reduction: that of the group holding most of its params
        share = sm_share(g, stride) if P - Pe >= Pe else sm_share(ge, se)
        if z == 0:
            red = sum(ar_time(x * rb, n, s, net, src_dtype_bytes=1.0, **kw) for x, n, s in groups)
            gather = 0.0
        else:
            red = sum(reduce_scatter_time(x * rb, n, s, net, src_dtype_bytes=1.0, **kw)
                      for x, n, s in groups)
            gather = sum(all_gather_time(x * o.weight_bytes, n, s, net, src_dtype_bytes=1.0, **kw)
                         for x, n, s in groups)
        if z >= 2:   # grads reduce-scattered every microbatch
            per_mb = red + (2.0 * gather if z >= 3 else 0.0)
            fsdp[r] = _contended(per_mb, max(per_mb / blocks[r], per_mb - (fb[r] + bb[r])),
                                 share)
            red = 0.0
            if z >= 3:
                gather = 0.0
        if o.overlap_grad_reduce:
            red = _contended(red, overlap_exposed(red, bb[r] / v, v, p, frac), share)
        if o.overlap_param_gather:
            gather = _contended(gather, overlap_exposed(gather, fb[r] / v, v, p, frac), share)
        sync[r] = red + gather
    load = dev_comp + tp_exp + p2p_exp + fsdp
    return load, tp_exp, p2p_exp, sync, fsdp


def options_record(options: PlanOptions) -> dict:
    """PlanOptions as a result records them (`plan_options` of `phaze evaluate --json`):
    its fields, zero_stage the stage they amount to (ZeRO-1 is held as zero1 = True with
    zero_stage 0, the distributed optimizer likewise), as the result's own zero_stage."""
    from dataclasses import asdict

    return {**asdict(options), "zero_stage": zero_stage_of(options)}


def zero_stage_of(options: PlanOptions) -> int:
    """The ZeRO stage a PlanOptions amounts to: zero_stage, at least 1 with zero1 or the
    distributed optimizer (0: nothing sharded)."""
    return max(options.zero_stage, 1 if (options.zero1 or options.distributed_optimizer) else 0)


def with_axes(options: PlanOptions, ep: int = 1, zero_stage: int | None = None) -> PlanOptions:
    """`options` with expert-parallel size `ep` and ZeRO stage `zero_stage` (None: as is).
    Stage 0/1 keep the plain model (zero1 off/on); 2/3 use extended_terms' ZeRO terms."""
    from dataclasses import replace

    if zero_stage is None:
        return replace(options, ep=ep)
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage!r}")
    return replace(options, ep=ep, zero1=zero_stage == 1, distributed_optimizer=False,
                   zero_stage=zero_stage if zero_stage >= 2 else 0)




def expert_parallel_chain(chain: Chain, ep: int, links: Links, options: PlanOptions) -> Chain:
    """The chain under expert parallelism of width ep (Megatron-Core MoE; Lepikhin et al.
    2021, GShard): each device keeps 1/ep of every MoE layer's routed experts
    (param_count - expert_param_count (1 - 1/ep)); the tokens a device computes stay
    T top_k slots on average (ep devices' tokens spread over its E/ep experts), so the
    expert GEMM time is unchanged; every MoE layer adds an all-to-all dispatch and an
    all-to-all combine of a2a_bytes in the forward and two more in the backward
    (phaze.cost.collective.collective_time "all_to_all" over the EP group: ep members
    stride et = options.expert_tp or t, Megatron-Core's expert rank order tp, ep, dp, pp
    with CP folded into the expert grid (grad_groups);
    topology options.collectives).
    Recomputing a block's forward re-runs its all-to-alls (recompute_s("full")), and so does
    selective recomputation of Megatron-Core's "moe" module, which checkpoints the whole MoE
    layer (route, dispatch, experts, combine): the dispatch and combine of the layers whose
    moe.dispatch it re-runs (chain.extra["a2a_rerun"]) join recompute_selective_s. The chain
    returned has a2a_bytes 0 (no second application) and extra["ep_a2a_s"] per layer (the
    time charged). options.moe_token_dispatcher "flex": the dispatch and combine of
    DeepEP / HybridEP (phaze.cost.collective.dedup_dispatch_time: one copy per remote node,
    NVLink forwarding); options.overlap_moe_expert_parallel_comm: a layer's forward
    all-to-alls hide under its backward compute and the other way round (Megatron-Core's
    combined 1F1B EP overlap), max(0, 2 a2a - other pass) charged, plus the SM share of the
    dispatch kernels (options.flex_sm_share, or NCCL's: nccl_sm_share) times the compute
    they overlap.
    ep = 1 or a dense chain: `chain` unchanged."""
    from dataclasses import replace

    from phaze.cost.collective import collective_time, dedup_dispatch_time

    if ep <= 1 or not chain.a2a_bytes.any():
        return chain
    et = options.expert_tp or chain.t
    if options.moe_token_dispatcher not in MOE_DISPATCHERS:
        raise ValueError(f"moe_token_dispatcher must be one of {MOE_DISPATCHERS}, got "
                         f"{options.moe_token_dispatcher!r}")
    flex = options.moe_token_dispatcher == "flex"
    if flex and not chain.extra.get("moe_experts"):
        raise ValueError("the flex dispatcher needs the chain's expert count and top_k "
                         "(build it with chain_from_graph)")
    sizes, inv = np.unique(chain.a2a_bytes, return_inverse=True)

    def one(b):
        if b <= 0:
            return 0.0
        if flex:
            return dedup_dispatch_time(float(b), ep, et, links, chain.extra["moe_experts"],
                                       chain.extra["moe_top_k"], links.bw_efficiency)
        return collective_time("all_to_all", float(b), ep, et, links, src_dtype_bytes=1.0,
                               topology=options.collectives, bw_efficiency=links.bw_efficiency)

    a2a = np.array([one(b) for b in sizes])[inv.reshape(-1)]
    add_f = add_b = 2.0 * a2a                     # dispatch + combine in each pass
    if options.overlap_moe_expert_parallel_comm:
        # the forward's all-to-alls run under the paired backward's compute and the other
        # way round (steady-state 1F1B pairs; warm-up and cool-down not credited apart);
        # while they run, their kernels hold `share` of the SMs, slowing the compute they
        # hide under by that fraction (as the overlapped DP collectives, comm_sm_share)
        share = options.flex_sm_share if flex else nccl_sm_share(options, links, ep, et)
        add_f = np.maximum(2.0 * a2a - chain.bwd_s, 0.0) + share * np.minimum(2.0 * a2a, chain.bwd_s)
        add_b = np.maximum(2.0 * a2a - chain.fwd_s, 0.0) + share * np.minimum(2.0 * a2a, chain.fwd_s)
    rerun = np.asarray(chain.extra.get("a2a_rerun", np.zeros(chain.n)), dtype=float)
    return replace(chain, fwd_s=chain.fwd_s + add_f, bwd_s=chain.bwd_s + add_b,
                   # the re-run dispatch and combine cost what the forward's do (their
                   # exposed part under the EP overlap), as full recomputation charges them
                   recompute_selective_s=chain.recompute_selective_s + add_f * rerun,
                   param_count=chain.param_count - chain.expert_param_count * (1.0 - 1.0 / ep),
                   expert_param_count=chain.expert_param_count / ep,
                   a2a_bytes=np.zeros(chain.n), extra={**chain.extra, "ep_a2a_s": add_f + add_b})


def context_parallel_chain(chain: Chain, cp: int, links: Links, options: PlanOptions) -> Chain:
    """The chain under context parallelism of size cp (Megatron-Core CP: Transformer
    Engine's ring attention with the load-balanced causal split; Liu et al. 2023, "Ring
    Attention with Blockwise Transformers"; options.cp_comm_type "p2p", the default; the
    others below). The chain is built for seq / cp tokens per
    device, so every op but the attention core is already right; the core sees all seq
    keys: cp steps of the local core each (each device holds 1/cp of the causal work),
    the K, V chunk (Chain.kv_bytes) travelling cp - 1 send/recv steps around the CP group
    (cp devices stride t, Megatron's rank order tp, cp, dp, pp; collective_time
    "send_recv", topology options.collectives) overlapped with the steps: every attention
    layer adds (cp - 1) max(core, send) to its forward (core_fwd_s, kv_bytes), backward
    (core_bwd_s, 2 kv_bytes: K, V and their gradients) and selective recomputation
    (core_recompute_s, kv_bytes; only where it re-runs a core). Full recomputation re-runs
    the forward, ring included. Returns the chain with kv_bytes 0 (no second application)
    and extra["cp_ring_s"] per layer (fwd + bwd), its FLOPs counting the cp - 1 further
    core steps (Chain.core_flops_*); cp = 1 or no kv_bytes: `chain`.

    The other --cp-comm-type values, as Transformer Engine runs them
    (attention/dot_product_attention/context_parallel.py), each core doing the same 1/cp of
    the causal work (cp local-core times; one larger kernel is charged as cp local ones;
    a sliding-window layer's band chain.extra["cp_core_steps"] local cores, fewer than cp):
    "allgather" (AttnFuncWithCPAndKVAllGather, Llama 3's CP: "KV all-gather between CP
    ranks is exposed"): the forward all-gathers K and V over the CP group (cp x kv_bytes
    gathered), the backward gathers them again and reduce-scatters dK and dV, none of it
    overlapped; "a2a" (AttnFuncWithCPAndQKVOA2A, DeepSpeed-Ulysses, Jacobs et al. 2023):
    all-to-alls turn the sequence shard into a head shard before the core (Q, K, V:
    chain.extra["cp_q_bytes"] + kv_bytes per device) and back after it (O,
    extra["cp_o_bytes"]); the backward moves dO in and dQ, dK, dV out; exposed. A
    selective recomputation of the core re-runs its forward communication too."""
    from dataclasses import replace

    from phaze.cost.collective import collective_time

    if cp <= 1 or not chain.kv_bytes.any():
        return chain
    sizes, inv = np.unique(chain.kv_bytes, return_inverse=True)
    inv = inv.reshape(-1)

    def per_layer(kind, payload, group=(cp, chain.t)):
        """collective_time of `kind` over the CP group (cp devices, stride t; or a level of
        it: n devices of stride `stride`) for each layer's payload(kv_bytes) bytes."""
        n, st = group
        return np.array([collective_time(kind, payload(float(b)), n, st, links,
                                         src_dtype_bytes=1.0, topology=options.collectives,
                                         bw_efficiency=links.bw_efficiency) if b > 0 else 0.0
                         for b in sizes])[inv]
    on = chain.kv_bytes > 0
    rec = on & (chain.core_recompute_s > 0)
    # further local cores per layer: cp - 1 for full attention, fewer for a sliding
    # window's band (chain.extra["cp_core_steps"]; allgather and a2a only, TE's p2p ring
    # refuses windows: model.graph.cp_comm_problem)
    full = np.full(chain.n, float(cp))
    # the all-gather CP's devices each compute their two chunks: the busiest one sets the
    # step (a window's band splits unevenly); the all-to-all's each get heads / cp, even
    key = "cp_core_steps_busiest" if options.cp_comm_type == "allgather" else "cp_core_steps"
    more = np.asarray(chain.extra.get(key, full), dtype=float) - 1.0
    more_flops = np.asarray(chain.extra.get("cp_core_flop_steps", full), dtype=float) - 1.0
    if options.cp_comm_type == "p2p":
        sf, sb = per_layer("send_recv", lambda b: b), per_layer("send_recv", lambda b: 2 * b)
        ring_f = np.where(on, (cp - 1) * np.maximum(chain.core_fwd_s, sf), 0.0)
        ring_b = np.where(on, (cp - 1) * np.maximum(chain.core_bwd_s, sb), 0.0)
        ring_r = np.where(rec, (cp - 1) * np.maximum(chain.core_recompute_s, sf), 0.0)
        more = more_flops = np.full(chain.n, cp - 1.0)
    elif options.cp_comm_type == "a2a+p2p":
        # all-to-alls over the first level (a devices, stride t) make each device's chunk a
        # times longer with heads / a, then a p2p ring over the second (cp / a devices,
        # stride t a) sends K, V of that chunk (the same bytes) beside steps of a local cores
        a = options.cp_a2a_size
        ring = cp // a
        q, o = chain.extra.get("cp_q_bytes", 0.0), chain.extra.get("cp_o_bytes", 0.0)
        if not (q > 0 and o > 0):
            raise ValueError("cp_comm_type a2a+p2p needs the chain's Q and O bytes "
                             "(extra cp_q_bytes / cp_o_bytes): rebuild its graph")
        inner, outer = (a, chain.t), (ring, chain.t * a)
        comm = per_layer("all_to_all", lambda b: q + b, inner) \
            + per_layer("all_to_all", lambda b: o, inner)
        sf = per_layer("send_recv", lambda b: b, outer)
        sb = per_layer("send_recv", lambda b: 2 * b, outer)

        def hier(core, send):
            return (a - 1) * core + (ring - 1) * np.maximum(a * core, send)
        ring_f = np.where(on, hier(chain.core_fwd_s, sf) + comm, 0.0)
        ring_b = np.where(on, hier(chain.core_bwd_s, sb) + comm, 0.0)
        ring_r = np.where(rec, hier(chain.core_recompute_s, sf) + comm, 0.0)
        more = more_flops = np.full(chain.n, cp - 1.0)
    else:
        if options.cp_comm_type == "allgather":
            comm_f = per_layer("all_gather", lambda b: cp * b)
            comm_b = comm_f + per_layer("reduce_scatter", lambda b: cp * b)
        else:
            q, o = chain.extra.get("cp_q_bytes", 0.0), chain.extra.get("cp_o_bytes", 0.0)
            if not (q > 0 and o > 0):
                raise ValueError("cp_comm_type a2a needs the chain's Q and O bytes "
                                 "(extra cp_q_bytes / cp_o_bytes): rebuild its graph")
            qkv, out = per_layer("all_to_all", lambda b: q + b), per_layer("all_to_all", lambda b: o)
            comm_f = comm_b = qkv + out
        ring_f = np.where(on, more * chain.core_fwd_s + comm_f, 0.0)
        ring_b = np.where(on, more * chain.core_bwd_s + comm_b, 0.0)
        ring_r = np.where(rec, more * chain.core_recompute_s + comm_f, 0.0)
    # the model FLOPs of the further steps (the device's 1/cp of the whole rectangle)
    steps = np.where(on, more_flops, 0.0)
    return replace(chain, fwd_s=chain.fwd_s + ring_f, bwd_s=chain.bwd_s + ring_b,
                   recompute_selective_s=chain.recompute_selective_s + ring_r,
                   flops_fwd=chain.flops_fwd + steps * chain.core_flops_fwd,
                   flops_bwd=chain.flops_bwd + steps * chain.core_flops_bwd,
                   flops_recompute_selective=chain.flops_recompute_selective
                   + steps * chain.core_flops_recompute,
                   kv_bytes=np.zeros(chain.n), extra={**chain.extra, "cp_ring_s": ring_f + ring_b})


def token_drop_label(capacity_factor: float | None, pad: bool) -> str:
    """"dropless", or "capacity factor F" with ", padded" when each expert's input is padded
    to its capacity (Megatron-Core --moe-pad-expert-input-to-capacity)."""
    if capacity_factor is None:
        return "dropless"
    return f"capacity factor {capacity_factor:g}" + (", padded" if pad else "")


def check_built_for(chain: Chain, options: PlanOptions) -> None:
    """ValueError when the chain's graph was built for another expert tensor-parallel size
    than options.expert_tp (its expert weights and collectives are that size's), for
    another token dispatcher than options.moe_token_dispatcher where that changes its
    layer times (chain.extra["moe_dispatcher"]: the alltoall sort by local expert), for
    other token dropping than options.moe_expert_capacity_factor /
    moe_pad_expert_input_to_capacity (chain.extra of those names: its routed slots; a
    chain that does not record them, not built from a graph, runs under any), or for
    another expert-parallel size than options.ep (chain.extra["ep"] > 0: its routed-expert
    GEMMs are grouped per local expert of that size; 0: built without one, any ep runs)."""
    built = chain.extra.get("expert_tp", chain.t)
    if built != (options.expert_tp or chain.t):
        raise ValueError(f"chain built with expert_tp {built}, options say "
                         f"{options.expert_tp or chain.t}: build the graph with the plan's size")
    disp = chain.extra.get("moe_dispatcher")
    if disp not in (None, options.moe_token_dispatcher):
        # the alltoall dispatcher's sort by local expert is in the graph's layer times
        raise ValueError(f"chain built for the {disp} token dispatcher, options say "
                         f"{options.moe_token_dispatcher}: build the graph with the plan's")
    if "moe_expert_capacity_factor" in chain.extra:
        built = (chain.extra["moe_expert_capacity_factor"],
                 bool(chain.extra.get("moe_pad_expert_input_to_capacity", False)))
        want = (options.moe_expert_capacity_factor, bool(options.moe_pad_expert_input_to_capacity))
        if built != want:
            raise ValueError(f"chain built with token dropping {token_drop_label(*built)}, "
                             f"options say {token_drop_label(*want)}: build the graph with "
                             "the plan's moe_expert_capacity_factor and padding")
    experts = int(chain.extra.get("moe_experts", 0))
    if experts and chain.a2a_bytes.any() and experts % options.ep:
        raise ValueError(f"expert parallelism ep = {options.ep} must divide the model's routed "
                         f"experts ({experts})")
    ep = chain.extra.get("ep", 0)
    if ep and ep != options.ep:
        raise ValueError(f"chain built with ep {ep} ({chain.extra['moe_experts'] // ep} local "
                         f"experts' GEMMs), options say ep {options.ep}: build the graph with "
                         "the plan's ep")


def chain_eps(chain: Chain, eps, options: PlanOptions) -> tuple[int, ...]:
    """The expert-parallel sizes a search on `chain` tries out of `eps` (None: options.ep):
    those dividing its routed experts, or only the chain's own when its graph was built for
    one (its layer times are that size's); (1,) for a dense chain, which EP leaves
    unchanged. ValueError when `eps` leaves the chain's size out or none divides."""
    want = tuple(int(e) for e in eps) if eps is not None else (options.ep,)
    experts = int(chain.extra.get("moe_experts", 0))
    if not chain.a2a_bytes.any():
        return (1,)          # a dense model: expert parallelism changes nothing (ep 1)
    if experts:              # sizes that split the routed experts evenly only
        want = dividing_eps(experts, want)
        if not want:
            raise ValueError(f"no expert-parallel size of {list(eps or (options.ep,))} divides "
                             f"the {experts} routed experts: search one that does")
    ep = chain.extra.get("ep", 0)
    if not ep:
        return want
    if ep not in want:
        raise ValueError(f"chain built with ep {ep}, the search tries ep {list(want)}: "
                         "build the graph with one of them or search its ep")
    return (ep,)


def axes_chain(chain: Chain, links: Links, options: PlanOptions) -> Chain:
    """The chain a plan with options.cp and options.ep runs: context_parallel_chain, then
    expert_parallel_chain (evaluate_plan and the DP both start from it). ValueError when
    the chain was built for other sizes (check_built_for)."""
    check_built_for(chain, options)
    return expert_parallel_chain(context_parallel_chain(chain, options.cp, links, options),
                                 options.ep, links, options)


def _linear(f, what: str) -> tuple[float, float]:
    """(a, b) with f(S) = a S + b for S > 0; ValueError when f is not linear (NCCL's
    ring/tree choice on a two-level network)."""
    f1, f2, f3 = f(1.0e9), f(2.0e9), f(3.0e9)
    a = (f2 - f1) / 1.0e9
    b = f1 - a * 1.0e9
    if abs(f3 - (3.0e9 * a + b)) > 1e-9 * max(f3, 1e-30):
        raise ValueError(f"{what} is not linear in the bytes: the DP needs collectives "
                         "'flat' or a network with levels")
    return a, b


def dp_sync_coeffs(options: PlanOptions, links: Links, t: int, d: int,
                   expert: bool = False, hbm_bw_Bps: float = 0.0) -> tuple:
    """dp_sync_coeffs_comm's (a, b, a_mb, b_mb) with the optimizer step's seconds per
    parameter (step_s_per_param; 0 without `hbm_bw_Bps`) added to a: a stage's sync and
    step per batch, a P + b, as evaluate_plan charges them together."""
    a, b, a_mb, b_mb = dp_sync_coeffs_comm(options, links, t, d, expert)
    return a + step_s_per_param(options, hbm_bw_Bps, t, d, expert), b, a_mb, b_mb


def dp_sync_coeffs_comm(options: PlanOptions, links: Links, t: int, d: int,
                        expert: bool = False) -> tuple:
    """What the DP needs of a stage holding P parameters (P > 0), as linear functions of P:
    (a, b, a_mb, b_mb) with the sync per batch a P + b and the exposed-before-overlap
    communication per microbatch a_mb P + b_mb (ZeRO-2/3; extended_terms adds
    max(that / layers, that - stage forward - backward) to the stage's load). The same
    collectives as evaluate_plan: the plain model's all-reduce (Links.dp_allreduce_coeffs,
    ring on the slowest link or hierarchical on levels), or extended_terms' choice per
    ZeRO stage over the d x cp group, stride t (0: all-reduce; 1: reduce-scatter of the
    gradients + all-gather of the weights; 2: the reduce-scatter every microbatch, the
    all-gather per batch; 3: reduce-scatter + 2 all-gathers every microbatch).
    ValueError for terms the DP cannot keep exact (overlaps of the DP collectives, TP
    overlap, non-linear collectives). `expert`: the same for a stage's routed-expert
    parameters, whose collectives run over the expert-data-parallel group (grad_groups;
    evaluate_plan charges them only on stages holding experts)."""
    from phaze.cost.collective import collective_time

    (g, stride), (ge, se) = grad_groups(options, t, d)
    if expert:
        g, t = ge, se
    if not options.extended():
        if g <= 1:
            return 0.0, 0.0, 0.0, 0.0
        if links.levels:
            return (*links.dp_allreduce_coeffs(g, t, options.grad_bytes), 0.0, 0.0)
        bw, lat = links.link(dp_inter(t, g, links))
        return 2.0 * (g - 1) / g * options.grad_bytes / bw, 2.0 * (g - 1) * lat, 0.0, 0.0
    o = options
    if o.overlap_grad_reduce or o.overlap_param_gather or o.tp_comm_overlap:
        raise ValueError("the DP does not search with overlap_grad_reduce, "
                         "overlap_param_gather or tp_comm_overlap; evaluate such plans")
    if g <= 1:
        return 0.0, 0.0, 0.0, 0.0
    rb = o.dp_reduce_bytes or o.grad_bytes
    kw = dict(src_dtype_bytes=1.0, topology=o.collectives, bw_efficiency=links.bw_efficiency)

    def coeff(kind, per_param):
        a, b = _linear(lambda S: collective_time(kind, S, g, t, links, **kw), kind)
        return a * per_param, b

    z = zero_stage_of(o)
    if z == 0:
        return (*coeff("all_reduce", rb), 0.0, 0.0)
    rs, ag = coeff("reduce_scatter", rb), coeff("all_gather", o.weight_bytes)
    if z == 1:
        return rs[0] + ag[0], rs[1] + ag[1], 0.0, 0.0
    if z == 2:
        return ag[0], ag[1], rs[0], rs[1]
    return 0.0, 0.0, rs[0] + 2.0 * ag[0], rs[1] + 2.0 * ag[1]


def _contended(comm: float, exposed: float, sm_share: float) -> float:
    """Time an overlapped collective of `comm` seconds adds: its `exposed` part plus, for
    the part hidden behind compute, the compute it slows by taking `sm_share` of the SMs."""
    return exposed + sm_share * max(comm - exposed, 0.0)


def overlap_exposed(comm: float, unit: float, v: int, p: int, frac: float) -> float:
    """Exposed part of a DP reduction (or parameter all-gather) that Megatron-Core overlaps
    chunk by chunk (overlap_grad_reduce / overlap_param_gather), seconds. `comm`: the whole
    collective; `unit`: one model chunk's backward (forward) of one microbatch on the
    device; `frac`: one bucket's share (the floor: the last bucket is always exposed).
    Source: megatron/core/pipeline_parallel/schedules.py (core_r0.8): a chunk's reduction
    starts, bucket by bucket, during its last backward; the interleaved schedule runs the
    last backwards in blocks of p microbatches per chunk, chunk v-1 first, so chunk j's
    reduction has j p later chunk-backwards to hide behind. The chunks' reductions queue on
    the network (each comm / v): the exposed time is the latest queue end,
    max over k of ((k + 1) comm / v - (k p + 1) unit), at k = 0 or k = v - 1. Waits in the
    cooldown are ignored (conservative). v = 1: max(comm frac, comm - one backward). The
    parameter all-gather of the next iteration is the mirror image in the warm-up."""
    return max(comm * frac, comm / v - unit, comm - ((v - 1) * p + 1) * unit)


def megatron_stages(chain: Chain, p: int, interleave: int = 1, first: int | None = None,
                    last: int | None = None, account_embedding: bool = False,
                    account_loss: bool = False, layout: str | None = None,
                    mtp_layers: int | None = None) -> list[tuple[int, int]]:
    """Megatron's split with uneven ends (--decoder-first-pipeline-num-layers, --decoder-
    last-pipeline-num-layers): the first / last pipeline rank holds `first` / `last` blocks
    and the other ranks the rest evenly (prologue in the first chunk, epilogue in the last);
    interleaved, each rank's blocks split evenly over its `interleave` chunks (chunk c on
    rank c mod p), as Megatron-Core's get_num_layers_to_build does. None = even.
    account_embedding / account_loss (Megatron-Core --account-for-embedding-in-pipeline-
    split / --account-for-loss-in-pipeline-split): the embedding / the output layer and loss
    count as one layer of the first / last chunk, the blocks plus those layers split evenly
    (so that chunk holds one block fewer). Raises ValueError when the rest does not divide
    evenly, or when both ways of unevening an end are given.
    layout (Megatron-Core --pipeline-model-parallel-layout, phaze.place.layout): the chunks
    as that string lists them, E the prologue, each t or m the next block, L the epilogue;
    a chunk may hold no block (then [a, a) when it holds neither E nor L). `mtp_layers`: how
    many of the chain's last blocks stand for the model's MTP layers (the m's); None: none,
    and a layout with an m is refused."""
    chunks = p * interleave
    b0, b1 = chain.block_span()
    nb = b1 - b0
    if layout is not None:
        if first is not None or last is not None or account_embedding or account_loss:
            raise ValueError("a pipeline layout cannot be combined with first=/last= or the "
                             "embedding/loss accounting: the layout sets every chunk")
        from phaze.place.layout import check_layout, parse_layout
        parsed = parse_layout(layout)
        check_layout(parsed, p, interleave, nb - (mtp_layers or 0), mtp_layers, layout)
        bounds, at = [0], b0
        for c in parsed[:-1]:
            at += c.count("t") + c.count("m")
            bounds.append(at)
        bounds.append(chain.n)
        return list(zip(bounds[:-1], bounds[1:]))
    if account_embedding or account_loss:
        if first is not None or last is not None:
            raise ValueError("first=/last= and the embedding/loss accounting both set the end "
                             "chunks: give one of them")
        units = nb + account_embedding + account_loss
        if units % chunks:
            ok = [k for k in range(1, units + 1) if units % k == 0]
            raise ValueError(f"{nb} blocks + {int(account_embedding) + int(account_loss)} "
                             f"accounted layers do not split evenly into pp x interleave = "
                             f"{chunks} chunks (divisors of {units}: {', '.join(map(str, ok))})")
        # the accounted layer comes off the first / last chunk only (a chunk-level split)
        per = units // chunks
        sizes = [per] * chunks
        sizes[0] -= account_embedding
        sizes[-1] -= account_loss
        if chunks == 1:
            return uniform_stages(chain, 1)
    elif first is None and last is None:
        return uniform_stages(chain, chunks)
    else:
        rest_ranks = p - (first is not None) - (last is not None)
        rest = nb - (first or 0) - (last or 0)
        ends = ", ".join(f"{k}={v}" for k, v in (("first", first), ("last", last))
                         if v is not None)
        if p < 2:
            raise ValueError(f"uneven pipeline ends ({ends}) need pipeline parallelism: pp = {p}")
        held = (first or 0) + (last or 0)
        if rest < 0:
            raise ValueError(f"the ends ({ends}) hold {held} blocks, more than the model's {nb}")
        if rest_ranks == 0 and rest:
            raise ValueError(f"the ends ({ends}) hold {held} blocks: with pp = 2 both ends "
                             f"must hold all {nb}")
        if rest_ranks and rest % rest_ranks:
            raise ValueError(f"{nb} blocks do not split into {ends} and {rest_ranks} even "
                             f"pipeline stages ({rest} blocks left for them)")
        per = rest // rest_ranks if rest_ranks else 0
        ranks = ([first] if first is not None else []) + [per] * rest_ranks + \
            ([last] if last is not None else [])
        if any(x % interleave for x in ranks):
            raise ValueError(f"pipeline stages of {ranks} blocks (first={first}, last={last}) do "
                             f"not split evenly into interleave = {interleave} chunks each")
        sizes = [ranks[c % p] // interleave for c in range(chunks)]
    if any(x < 1 for x in sizes):
        raise ValueError("every pipeline chunk needs at least one block")
    bounds = [b0]
    for x in sizes:
        bounds.append(bounds[-1] + x)
    bounds[0], bounds[-1] = 0, chain.n
    return list(zip(bounds[:-1], bounds[1:]))


def _base(chain, p, d, t, mbs, batch, recompute, v, stages):
    return {"p": p, "d": d, "t": t, "mbs": mbs, "batch": batch, "recompute": recompute,
            "interleave": v, "devices": p * d * t, "stages": [list(s) for s in stages]}


def options_dict(options: PlanOptions) -> dict:
    return asdict(options)
