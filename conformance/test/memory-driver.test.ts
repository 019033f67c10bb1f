import { MemoryDriver } from '@cache/core';
import { describeDriverConformance } from '../src/index.js';

// Core's MemoryDriver is the kit's reference: the smallest complete driver.
// It declares supports.persistent: false, so the cases that need other instances or processes are skipped with that reason.
describeDriverConformance({ name: 'memory', create: (dir) => new MemoryDriver({ cacheDir: dir }) });
