// Creates a device by name: the one place that knows every backend (the Ascend backend joins here).
import { CpuDevice } from './cpu/device.ts';
import type { Device } from './device.ts';
import { WebGPUDevice, type WebGPUOptions } from './webgpu/device.ts';

export const DEVICE_KINDS = ['webgpu', 'cpu'] as const;
export type DeviceKind = (typeof DEVICE_KINDS)[number];

export async function createDevice(kind: string, opts: WebGPUOptions = {}): Promise<Device> {
  switch (kind) {
    case 'cpu': return new CpuDevice();
    case 'webgpu': return WebGPUDevice.create(opts);
    default: throw new Error(`unknown device '${kind}' (choose one of: ${DEVICE_KINDS.join(', ')})`);
  }
}
