import { MemoryDriver } from '@cache/core';
import { describeDriverConformance } from '../src/index.js';

// Core's MemoryDriver is the kit's reference: the smallest complete driver.
describeDriverConformance({ name: 'memory', create: (dir) => new MemoryDriver({ cacheDir: dir }), persistent: false });
