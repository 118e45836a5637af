// gati's wire API. Binary protocol over framed transport (4-byte big-endian length, then the
// message); frames larger than the configured maximum (default 16 MiB) are refused.
//
// Public: service Gati (the frontend). Internal: BaseWorker, CacheWorker, Selector, Trainer.
// A message that does not decode (a required field missing, a wrong type) is answered with a
// TApplicationException of type PROTOCOL_ERROR whose message is "METHOD: what was wrong"; the
// connection stays usable. docs/api.md: the calls, inputs, errors, and client examples.

namespace rs gati
namespace py gati
namespace java ai.gati.thrift
namespace go gati
namespace cpp gati
namespace js gati
namespace netstd Gati.Thrift

// A dense tensor: row-major little-endian values. Only "float32" is accepted.
struct TensorData {
  1: required list<i64> shape,
  2: required binary data,
  3: optional string dtype = "float32",
}

// One input: an encoded image (JPEG or PNG, of the model's input size) or a raw normalised tensor
// of shape [C, H, W] or [1, C, H, W].
union Input {
  1: binary image,
  2: TensorData tensor,
}

struct InferRequest {
  // A name from models() (ModelNotFound otherwise).
  1: required string model,
  2: required Input input,
  // Echoed back; assigned by the frontend when absent.
  3: optional string request_id,
  // Relative deadline in milliseconds from arrival at the frontend (absent: the cluster's
  // default_deadline_ms, 5,000 unless configured). Enforced in every mode: while the request waits
  // for admission or a model replica, and between stages; past it the answer is DeadlineExceeded.
  4: optional i64 deadline_ms,
  // How many classes the response lists (best first), 1 to the model's class count; anything else
  // is InvalidInput. Cache hits list them too, from the cache's own softmax.
  5: optional i32 top_k = 5,
}

enum AnswerSource {
  CACHE = 1,
  BASE = 2,
}

// One class of an answer. class_index: 0-based, into ModelInfo.classes; confidence: the answering
// model's softmax probability of the class, in [0, 1] (a cache's own softmax on cache hits).
struct ClassScore {
  1: required i32 class_index,
  2: required string class_name,
  3: required double confidence,
}

// Server-side time of one request, in milliseconds. queue_ms is the wait for a model replica in the
// base worker (inline and base-only; 0 when a distributed cache answered first); base_ms the base
// worker's compute after it (inline: including the caches, also in cache_ms).
struct Timing {
  1: required double total_ms,
  2: required double queue_ms,
  3: required double preprocess_ms,
  4: required double base_ms,
  5: required double cache_ms,
}

// The answer: the first cache confident enough under the plan's budget, else the base model's.
struct InferResponse {
  // The request's own id, or the one the frontend assigned.
  1: required string request_id,
  // The top class, as top_k[0]: 0-based index, name, and softmax probability in [0, 1].
  2: required i32 class_index,
  3: required string class_name,
  4: required double confidence,
  // top_k entries, best first (InferRequest.top_k).
  5: required list<ClassScore> top_k,
  6: required AnswerSource source,
  // When source == CACHE: the layer (stage name) whose cache answered, and the cache version
  // ("v0" is the plan's; online learning promotes "v1", "v2", ...).
  7: optional string cache_layer,
  8: optional string cache_version,
  9: required Timing timing,
  // When source == CACHE: "learned" (a cache model answered), "memory" (the memory cache gave the
  // answer the base model gave a near-duplicate of this input) or "exact" (the frontend gave the
  // answer an earlier request with the very same input got; cache_layer "input").
  10: optional string cache_kind,
}

struct ModelInfo {
  1: required string name,
  // [C, H, W] of one input; a raw tensor is sent as [C, H, W] or [1, C, H, W].
  2: required list<i64> input_shape,
  3: required list<string> classes,
  // "inline", "distributed" or "base-only".
  4: required string mode,
  5: required list<string> cache_layers,
  // The plan's accuracy budget, in the unit `budget_unit` names.
  6: required double budget,
  // How the server turns an image into the model's input, so that a client sending a raw tensor
  // can do the same: decode, convert to RGB (grey is repeated into three channels, alpha is
  // dropped), require exactly H x W pixels, lay out as `input_layout`, scale each 8-bit value to
  // [0, 1], then per channel (x - mean[c]) / std[c], in float32.
  7: optional string input_layout,
  8: optional string colour,
  9: optional list<double> mean,
  10: optional list<double> std,
  // Encodings accepted in Input.image.
  11: optional list<string> image_formats,
  // "fidelity": the fraction of answers allowed to differ from the base model's own (the default);
  // "accuracy": the fraction of top-1 accuracy against labelled data the plan may lose.
  12: optional string budget_unit,
}

// ok: the frontend can answer (the base worker is reachable; cache workers are optional, a dead one
// only costs its hits).
struct Health {
  1: required bool ok,
  // Worker address -> reachable.
  2: required map<string, bool> workers,
}

// Counters since the frontend started: requests answered or failed (requests = hits + misses +
// errors), hits per cache layer, and requests in flight now.
struct Stats {
  1: required i64 requests,
  2: required i64 hits,
  3: required i64 misses,
  4: required i64 errors,
  5: required map<string, i64> hits_per_layer,
  6: required i64 in_flight,
}

// The request itself is wrong (undecodable image, wrong size or shape, dtype, top_k, deadline_ms
// <= 0, an empty batch); the message names the field and value. Not worth retrying.
exception InvalidInput { 1: required string message }
// InferRequest.model is not served here; the message lists the models that are.
exception ModelNotFound { 1: required string message }
// More requests in flight than the frontend admits (max_in_flight): retry with back-off.
exception Overloaded { 1: required string message }
// The base worker cannot be reached or failed the run: retry with back-off.
exception Unavailable { 1: required string message }
// The request's deadline passed before it could be answered.
exception DeadlineExceeded { 1: required string message }

// One request's outcome in `infer_each`: its response, or the error it alone raised.
union InferOutcome {
  1: InferResponse response,
  2: InvalidInput invalid,
  3: ModelNotFound not_found,
  4: Overloaded overloaded,
  5: Unavailable unavailable,
  6: DeadlineExceeded deadline,
}

service Gati {
  InferResponse infer(1: InferRequest request)
    throws (1: InvalidInput invalid, 2: ModelNotFound not_found, 3: Overloaded overloaded,
            4: Unavailable unavailable, 5: DeadlineExceeded deadline),
  // All or nothing: every request is checked before any runs (the first bad one is the error; an
  // InvalidInput names its position, "requests[i]: ..."); then they run as one batch (inline and
  // base-only: one batched base run, each sample leaving at its own exit; distributed: one by one).
  list<InferResponse> infer_batch(1: list<InferRequest> requests)
    throws (1: InvalidInput invalid, 2: ModelNotFound not_found, 3: Overloaded overloaded,
            4: Unavailable unavailable, 5: DeadlineExceeded deadline),
  // One outcome per request, in order: a bad item fails alone, the others run as one batch. The
  // whole call counts once against the in-flight limit (every item is Overloaded past it).
  list<InferOutcome> infer_each(1: list<InferRequest> requests),
  // The models served and how to call them.
  list<ModelInfo> models(),
  Health health(),
  Stats stats(),
}

// ---- internal services ----

struct BaseRequest {
  1: required string request_id,
  // Normalised input, [1, C, H, W].
  2: required TensorData input,
  // Stages whose output is streamed to the cache workers (empty: none).
  3: required list<i32> stream_stages,
  // host:port of the Selector that cache workers report to.
  4: required string selector,
  // Sampled to check the caches against the base model: distributed, run to the end even after a
  // cancel (agreement on hits); inline, a hit still answers at once and leaves a partial sample.
  5: required bool complete_on_hit,
  // Milliseconds the request may still take, from when the base worker receives it: a run that
  // has not started by then (waiting for a model replica) fails with DeadlineExceeded, and one that
  // passes it stops between stages (completed = false). Absent: no deadline.
  6: optional i64 deadline_ms,
}

struct BaseResult {
  1: required string request_id,
  // False when the request was cancelled before the last stage.
  2: required bool completed,
  // Softmax of the answer: the final logits, or (inline mode) the cache that answered.
  3: optional list<double> probs,
  4: required i32 stages_run,
  5: required double compute_ms,
  // Inline mode: the stage whose cache answered (absent: the base model answered).
  6: optional i32 exit_stage,
  // Time spent in cache models (inline mode).
  7: optional double cache_ms,
  // Inline mode: the cache version that answered.
  8: optional string cache_version,
  // Time waiting for a model replica, in milliseconds (not part of compute_ms).
  9: optional double queue_ms,
  // The run stopped because it passed its deadline_ms (completed is false).
  10: optional bool deadline_passed,
  // Inline mode, on a hit: "learned" (a cache model) or "memory" (a stored answer to a near-duplicate).
  11: optional string cache_kind,
}

// ---- online learning ----

// What one base run leaves for the trainer: the activation at every planned cache stage (in the
// order of SampleBatch.stages) and the base model's logits. An inline hit sampled to complete
// stops at its cache: activations up to that stage and no logits; the trainer runs the rest.
struct Sample {
  1: required list<TensorData> activations,
  2: required list<double> logits,
  // Sampled uniformly (complete_on_hit), not a run every cache missed: only these estimate how
  // the caches do on the live traffic.
  3: required bool uniform,
}

struct SampleBatch {
  1: required list<i32> stages,
  2: required list<Sample> samples,
  // Samples lost so far (buffer busy, or evicted unread); the request path never waits.
  3: required i64 dropped,
}

// One cache's state in a version: parameters (named as in the plan's weights file, without the
// cache's key prefix), decision (JSON, as in plan.json), and whether it may answer at all.
struct CacheUpdate {
  1: required string layer,
  2: required map<string, TensorData> params,
  3: required string decision_json,
  4: required bool enabled,
}

struct CacheVersion {
  1: required string version,
  2: required list<CacheUpdate> caches,
}

// One request's outcome in a batched base run.
union BaseOutcome {
  1: BaseResult result,
  2: InvalidInput invalid,
  3: Unavailable unavailable,
  4: DeadlineExceeded deadline,
}

service BaseWorker {
  BaseResult run(1: BaseRequest request)
    throws (1: InvalidInput invalid, 2: Unavailable unavailable, 3: DeadlineExceeded deadline),
  // The requests as one batch: inline, a request a cache answers leaves the batch at that stage and
  // the rest go on together. One outcome per request, in order; a malformed request fails alone.
  list<BaseOutcome> run_batch(1: list<BaseRequest> requests),
  // Stop the request's remaining stages (a cache answered).
  oneway void cancel(1: string request_id),
  Health health(),
  // Online learning: hands over (and forgets) up to max_samples collected samples, newest first.
  SampleBatch take_samples(1: i32 max_samples),
  // Replaces the inline caches' parameters and decisions between requests (in-flight requests
  // finish on the version they started with).
  void install(1: CacheVersion version) throws (1: InvalidInput invalid),
  string serving_version(),
  // Forgets every entry of the memory cache (benchmarks start each run from an empty store);
  // returns how many there were (0 without a memory cache).
  i64 clear_memory(),
}

struct Activation {
  1: required string request_id,
  2: required i32 stage,
  3: required TensorData tensor,
  4: required string selector,
}

struct CacheResult {
  1: required string request_id,
  2: required i32 stage,
  3: required bool hit,
  4: required i32 class_index,
  5: required double confidence,
  6: required double compute_ms,
  7: optional string version,
  // The cache model's softmax over all classes (a hit's top-k comes from it).
  8: optional list<double> probs,
  // "learned" (a cache model; the default) or "memory" (a stored answer to a near-duplicate).
  9: optional string cache_kind,
}

// The answer the selector gave a request (the base model's, or a cache's it trusts), for the
// memory cache of the worker that looked the request up.
struct FinalAnswer {
  1: required string request_id,
  2: required list<double> probs,
}

service CacheWorker {
  // Evaluate and report to activation.selector; never blocks the base worker.
  oneway void lookup(1: Activation activation),
  CacheResult lookup_sync(1: Activation activation) throws (1: InvalidInput invalid),
  Health health(),
  // Replaces this worker's caches (only the layers it serves are taken from the version).
  void install(1: CacheVersion version) throws (1: InvalidInput invalid),
  string serving_version(),
  // Stores a request's answer under the key its lookup kept (memory cache workers; a request not
  // looked up here, or forgotten since, is ignored).
  oneway void remember(1: FinalAnswer answer),
  // As BaseWorker.clear_memory, for the memory cache this worker holds.
  i64 clear_memory(),
}

service Selector {
  oneway void report(1: CacheResult result),
  // Forgets the frontend's answers to exact repeats (benchmarks start each run from none); returns
  // how many there were.
  i64 clear_memory(),
}

// ---- operator controls of online learning (the trainer) ----

struct VersionInfo {
  1: required string version,
  2: required i64 created_unix,
  // Why it exists: "plan", "promoted ...", "guard disabled ...".
  3: required string note,
  4: required list<string> disabled_layers,
}

struct Versions {
  // The version the workers are told to serve.
  1: required string serving,
  2: optional string pinned,
  3: required bool paused,
  // Oldest first.
  4: required list<VersionInfo> versions,
  // Worker address -> the version it reports serving ("?" when unreachable).
  5: required map<string, string> workers,
}

exception AdminError { 1: required string message }

service Trainer {
  Versions versions(),
  // Serve this version and stop promoting until unpin.
  Versions pin(1: string version) throws (1: AdminError error),
  Versions unpin(),
  // Pin the version before the serving one.
  Versions rollback() throws (1: AdminError error),
  // Stop (or resume) collecting samples and training; the serving version stays.
  Versions pause(1: bool paused),
}
