// A device whose listed members are replaced (a kernel forced to another layout or variant, a lower
// binding limit, a dispatch counter) and whose other members pass through to the real device.
export function withOverrides<D extends object>(dev: D, over: Record<string, unknown>): D {
  return new Proxy(dev, {
    get(target, prop) {
      if (typeof prop === 'string' && over[prop] !== undefined) return over[prop];
      const v = Reflect.get(target, prop, target);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}
