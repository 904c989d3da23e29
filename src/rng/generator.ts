// PyTorch's CPU generator (torch 2.6): the mt19937 engine of aten/src/ATen/core/MT19937RNGEngine.h
// wrapped as in aten/src/ATen/CPUGeneratorImpl.cpp (random(), random64(), the cached Box-Muller
// normals, get_state()/set_state()). Pure u32 arithmetic: the hot path never touches BigInt.

const N = 624;
const M = 397;
const MATRIX_A = 0x9908b0df;
const UMASK = 0x80000000;
const LMASK = 0x7fffffff;

/** c10::detail::default_rng_seed_val: the seed of a fresh torch.Generator(). */
export const DEFAULT_SEED = 67280421310721n;

/** sizeof(CPUGeneratorImplState) on x86-64 / aarch64: the length of torch.get_rng_state(). */
export const STATE_BYTES = 5056;

// Byte offsets inside CPUGeneratorImplState (CPUGeneratorImpl.cpp): the legacy pod
// {u64 the_initial_seed; int left; int seeded; u64 next; u64 state[624]; double normal_x,
// normal_y, normal_rho; int normal_is_valid;} padded to 8, then {float next_float_normal_sample;
// bool is_next_float_normal_sample_valid;} padded to 8. get_state() builds it in a value-initialised
// struct, so the padding bytes are zero.
const OFF_SEED = 0;
const OFF_LEFT = 8;
const OFF_SEEDED = 12;
const OFF_NEXT = 16;
const OFF_STATE = 24;
const OFF_NORMAL_X = OFF_STATE + 8 * N;
const OFF_NORMAL_Y = OFF_NORMAL_X + 8;
const OFF_NORMAL_RHO = OFF_NORMAL_Y + 8;
const OFF_NORMAL_VALID = OFF_NORMAL_RHO + 8;
const OFF_FLOAT_NORMAL = 5048;
const OFF_FLOAT_NORMAL_VALID = 5052;

function toSeed(seed: number | bigint): bigint {
  if (typeof seed === 'number' && !Number.isSafeInteger(seed)) {
    throw new RangeError(`seed must be an integer, got ${seed}`);
  }
  const s = BigInt(seed);
  if (s < 0n || s >= 1n << 64n) throw new RangeError(`seed must be in [0, 2^64), got ${s}`);
  return s;
}

/**
 * One torch CPU generator. Pass it explicitly to every draw (one per run); never share a global.
 * The same seed and the same sequence of calls give torch's bits.
 */
export class Generator {
  private readonly mt = new Uint32Array(N);
  private left = 1;
  private next = 0;
  private seed = 0n;
  /** CPUGeneratorImpl::next_double_normal_sample_: the r*sin half of the last scalar Box-Muller pair. */
  nextDoubleNormal: number | null = null;
  /** CPUGeneratorImpl::next_float_normal_sample_: no CPU kernel sets it; kept for the state layout. */
  nextFloatNormal: number | null = null;

  constructor(seed: number | bigint = DEFAULT_SEED) {
    this.manualSeed(seed);
  }

  /**
   * CPUGeneratorImpl::set_current_seed: drops both cached normals and re-seeds the engine
   * (mt19937_engine::init_with_uint32: only the low 32 bits reach the engine; the full
   * 64-bit value is kept as initial_seed()).
   */
  manualSeed(seed: number | bigint): this {
    const s = toSeed(seed);
    this.seed = s;
    const mt = this.mt;
    mt[0] = Number(s & 0xffffffffn);
    for (let j = 1; j < N; j++) {
      const p = mt[j - 1]! ^ (mt[j - 1]! >>> 30);
      mt[j] = Math.imul(1812433253, p) + j;
    }
    this.left = 1;
    this.next = 0;
    this.nextDoubleNormal = null;
    this.nextFloatNormal = null;
    return this;
  }

  initialSeed(): bigint {
    return this.seed;
  }

  /** One 32-bit engine word (mt19937_engine::operator()), as an unsigned number. */
  random(): number {
    if (--this.left === 0) this.twist();
    let y = this.mt[this.next++]!;
    y ^= y >>> 11;
    y ^= (y << 7) & 0x9d2c5680;
    y ^= (y << 15) & 0xefc60000;
    y ^= y >>> 18;
    return y >>> 0;
  }

  /** CPUGeneratorImpl::random64: (first word << 32) | second word. */
  random64(): bigint {
    const hi = this.random();
    const lo = this.random();
    return (BigInt(hi) << 32n) | BigInt(lo);
  }

  /** mt19937_engine::next_state. */
  private twist(): void {
    const mt = this.mt;
    this.left = N;
    this.next = 0;
    let k = 0;
    for (; k < N - M; k++) {
      const y = (mt[k]! & UMASK) | (mt[k + 1]! & LMASK);
      mt[k] = mt[k + M]! ^ (y >>> 1) ^ (mt[k + 1]! & 1 ? MATRIX_A : 0);
    }
    for (; k < N - 1; k++) {
      const y = (mt[k]! & UMASK) | (mt[k + 1]! & LMASK);
      mt[k] = mt[k + M - N]! ^ (y >>> 1) ^ (mt[k + 1]! & 1 ? MATRIX_A : 0);
    }
    const y = (mt[N - 1]! & UMASK) | (mt[0]! & LMASK);
    mt[N - 1] = mt[M - 1]! ^ (y >>> 1) ^ (mt[0]! & 1 ? MATRIX_A : 0);
  }

  /** The bytes of torch.get_rng_state() / Generator.get_state() (CPUGeneratorImpl::get_state). */
  getState(): Uint8Array {
    const bytes = new Uint8Array(STATE_BYTES);
    const dv = new DataView(bytes.buffer);
    dv.setBigUint64(OFF_SEED, this.seed, true);
    dv.setInt32(OFF_LEFT, this.left, true);
    dv.setInt32(OFF_SEEDED, 1, true);
    dv.setBigUint64(OFF_NEXT, BigInt(this.next), true);
    for (let j = 0; j < N; j++) dv.setUint32(OFF_STATE + 8 * j, this.mt[j]!, true);
    if (this.nextDoubleNormal !== null) {
      dv.setFloat64(OFF_NORMAL_Y, this.nextDoubleNormal, true);
      dv.setInt32(OFF_NORMAL_VALID, 1, true);
    }
    if (this.nextFloatNormal !== null) {
      dv.setFloat32(OFF_FLOAT_NORMAL, this.nextFloatNormal, true);
      bytes[OFF_FLOAT_NORMAL_VALID] = 1;
    }
    return bytes;
  }

  /**
   * Restores a state from getState() or from torch.get_rng_state() bytes, with the checks of
   * CPUGeneratorImpl::set_state (size, mt19937_engine::is_valid). The u64 state words are
   * truncated to 32 bits as torch's std::copy into uint32_t does.
   */
  setState(s: Uint8Array): void {
    if (s.byteLength !== STATE_BYTES) {
      throw new RangeError(`expected a CPU generator state of ${STATE_BYTES} bytes, got ${s.byteLength}`);
    }
    const dv = new DataView(s.buffer, s.byteOffset, s.byteLength);
    const left = dv.getInt32(OFF_LEFT, true);
    const seeded = dv.getInt32(OFF_SEEDED, true);
    const next = dv.getBigUint64(OFF_NEXT, true) & 0xffffffffn;
    if (seeded === 0 || left <= 0 || left > N || next > BigInt(N)) throw new RangeError('invalid mt19937 state');
    this.seed = dv.getBigUint64(OFF_SEED, true);
    this.left = left;
    this.next = Number(next);
    for (let j = 0; j < N; j++) this.mt[j] = dv.getUint32(OFF_STATE + 8 * j, true);
    this.nextDoubleNormal = dv.getInt32(OFF_NORMAL_VALID, true) ? dv.getFloat64(OFF_NORMAL_Y, true) : null;
    this.nextFloatNormal = s[OFF_FLOAT_NORMAL_VALID] ? dv.getFloat32(OFF_FLOAT_NORMAL, true) : null;
  }
}
