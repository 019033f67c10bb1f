import { tmpdir } from 'node:os';
import type { DriverSupports } from '@cache/core';
import { OPTIONAL_DRIVER_METHODS, type CaseGroup, type ConformanceKit } from './kit.js';

/** One group's cases, as the kit registers them for a driver with the given manifest. */
export interface GroupInventory {
  readonly name: string;
  readonly description: string | undefined;
  /** Every case title the group registers (cases it would skip for this manifest included). */
  readonly titles: readonly string[];
}

/** A manifest that declares everything, so that every case is registered to run. */
export const FULL_SUPPORTS: DriverSupports = Object.freeze({
  persistent: true,
  storedChecksum: true,
  crossProcessHits: 'exact',
  metadataStore: 'separate',
});

/**
 * The cases of each group, collected without running anything: what the
 * README's table and counts are generated from, and what a driver author can
 * print to see the plan for a manifest.
 */
export function inventory(groups: readonly CaseGroup[], supports: DriverSupports = FULL_SUPPORTS): GroupInventory[] {
  return groups.map((group) => {
    const titles: string[] = [];
    const kit: ConformanceKit = {
      name: 'inventory',
      fs: { name: 'os-tmp', root: tmpdir(), fromEnv: false },
      probe: { root: tmpdir(), xattr: { supported: true, reason: '' }, atime: { supported: true, reason: '' } },
      supports,
      persistent: supports.persistent,
      driverModule: 'file:///inventory-only.js',
      optionalMethods: new Set(OPTIONAL_DRIVER_METHODS),
      noSpace: { supported: true, reason: '' },
      it: (title) => titles.push(title),
      skip: (title) => titles.push(title),
    };
    group.register(kit);
    return { name: group.name, description: group.description, titles };
  });
}
