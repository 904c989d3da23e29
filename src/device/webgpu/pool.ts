// Pooling allocator: freed GPU buffers are kept by size class and handed out again, because creating
// buffers is slow and training allocates the same activation sizes every step.
import type { MemoryStats } from '../device.ts';

/** Size classes: 256-byte steps up to 64 KiB, then 8 steps per power of two (at most 12.5% slack). */
export function sizeClass(bytes: number): number {
  const n = Math.max(bytes, 4);
  if (n <= 65536) return Math.ceil(n / 256) * 256;
  const step = 2 ** (Math.floor(Math.log2(n)) - 3);
  return Math.ceil(n / step) * step;
}

export class BufferPool<B extends { destroy(): void } = GPUBuffer> {
  private readonly free = new Map<number, B[]>();
  private live = 0;
  private liveCount = 0;
  private peak = 0;
  private pooled = 0;

  constructor(private readonly make: (size: number) => B) {}

  take(bytes: number): B {
    const size = sizeClass(bytes);
    const reused = this.free.get(size)?.pop();
    if (reused) this.pooled -= size;
    const buf = reused ?? this.make(size);
    this.live += size;
    this.liveCount++;
    this.peak = Math.max(this.peak, this.live);
    return buf;
  }

  give(buf: B, bytes: number): void {
    const size = sizeClass(bytes);
    this.live -= size;
    this.liveCount--;
    this.pooled += size;
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(buf);
  }

  stats(): MemoryStats {
    return { liveBytes: this.live, liveBuffers: this.liveCount, peakBytes: this.peak, pooledBytes: this.pooled };
  }

  resetPeak(): void {
    this.peak = this.live;
  }

  /** Destroys the pooled (free) buffers; live ones belong to their holders. */
  trim(): void {
    for (const list of this.free.values()) list.forEach((b) => b.destroy());
    this.free.clear();
    this.pooled = 0;
  }

  destroy(): void {
    this.trim();
  }
}
