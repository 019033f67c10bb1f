#!/usr/bin/python3
"""Times OpenStack Glance's own image cache (Debian's python3-glance) for bench figure 14.

Run with Debian's /usr/bin/python3 (where python3-glance installs). Reads one
JSON request per line on stdin and answers each with one JSON line on stdout
({"ok": true, "result": ...} or {"ok": false, "error": ..., "traceback": ...}).
Glance's imports (about 0.7 s) are paid once, at start, outside every timing.

Every request names a cache directory and a driver ("sqlite" | "xattr"); the
process builds one `glance.image_cache.ImageCache` per (directory, driver),
configured as glance-api configures it (oslo.config `image_cache_dir`,
`image_cache_driver`, `image_cache_sqlite_db`, `image_cache_max_size`), and
refuses a facade that fell back to another driver.

Operations:
    workload   ids, size     the figure's small-entry workload, each phase timed
                             with time.perf_counter() around a loop over every id:
                             write   cache_image_iter(id, iter([bytes]))
                             isCached, getHitCount, getImageSize
                                     is_cached(id), get_hit_count(id), get_image_size(id)
                             read    with open_for_read(id) as f: f.read() (Glance counts the hit on exit)
                             list    get_cached_images(), `lists` times
                             prune   image_cache_max_size = half the bytes cached, prune()
                             -> {"seconds": {phase: s}, "listed": n, "pruned": [files, bytes]}
    list       repeat        get_cached_images() `repeat` times on a directory populated
                             beforehand -> {"seconds": [s, ...], "listed": n}
    version                  {"glance": version, "python": version}
"""
import importlib.metadata
import json
import os
import sys
import time
import traceback

from oslo_config import cfg

import glance.image_cache
from glance.image_cache.drivers import sqlite as _sqlite_driver  # registers image_cache_sqlite_db

CONF = cfg.CONF
CONF([], project='glance', default_config_files=[], default_config_dirs=[])

_caches = {}


def _cache(request, max_size=10 * 1024 ** 4):
    directory = request['dir']
    driver = request['driver']
    CONF.set_override('image_cache_dir', directory)
    CONF.set_override('image_cache_driver', driver)
    CONF.set_override('image_cache_sqlite_db', 'cache.db')
    CONF.set_override('image_cache_max_size', max_size)
    key = (directory, driver)
    cache = _caches.get(key)
    if cache is None:
        cache = glance.image_cache.ImageCache()
        module = type(cache.driver).__module__
        if module != 'glance.image_cache.drivers.' + driver:
            raise RuntimeError('Glance fell back to %s instead of the %s driver' % (module, driver))
        _caches[key] = cache
    return cache


def _workload(request):
    ids = request['ids']
    data = b'\x42' * request['size']
    lists = request.get('lists', 5)
    cache = _cache(request)
    seconds = {}
    clock = time.perf_counter

    start = clock()
    for image_id in ids:
        if not cache.cache_image_iter(image_id, iter([data])):
            raise RuntimeError('Glance did not cache %s' % image_id)
    seconds['write'] = clock() - start

    start = clock()
    for image_id in ids:
        if not cache.is_cached(image_id):
            raise RuntimeError('%s is not cached' % image_id)
    seconds['isCached'] = clock() - start

    start = clock()
    for image_id in ids:
        cache.get_hit_count(image_id)
    seconds['getHitCount'] = clock() - start

    start = clock()
    for image_id in ids:
        cache.get_image_size(image_id)
    seconds['getImageSize'] = clock() - start

    start = clock()
    for image_id in ids:
        with cache.open_for_read(image_id) as cache_file:
            if len(cache_file.read()) != len(data):
                raise RuntimeError('short read of %s' % image_id)
    seconds['read'] = clock() - start

    listed = 0
    start = clock()
    for _ in range(lists):
        listed = len(cache.get_cached_images())
    seconds['list'] = (clock() - start) / lists

    CONF.set_override('image_cache_max_size', len(ids) * len(data) // 2)
    start = clock()
    pruned = cache.prune()
    seconds['prune'] = clock() - start
    CONF.set_override('image_cache_max_size', 10 * 1024 ** 4)
    return {'seconds': seconds, 'listed': listed, 'pruned': list(pruned)}


def _list(request):
    cache = _cache(request)
    seconds = []
    listed = 0
    for _ in range(request.get('repeat', 1)):
        start = time.perf_counter()
        listed = len(cache.get_cached_images())
        seconds.append(time.perf_counter() - start)
    return {'seconds': seconds, 'listed': listed}


def handle(request):
    op = request['op']
    if op == 'version':
        return {'glance': importlib.metadata.version('glance'), 'python': sys.version.split()[0]}
    if op == 'workload':
        return _workload(request)
    if op == 'list':
        return _list(request)
    raise ValueError('unknown op %r' % (op,))


def main():
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {'ok': True, 'result': handle(json.loads(line))}
        except Exception as error:  # every failure goes back to the bench, the process lives on
            answer = {'ok': False, 'type': type(error).__name__, 'error': str(error), 'traceback': traceback.format_exc()}
        sys.stdout.write(json.dumps(answer) + '\n')
        sys.stdout.flush()


if __name__ == '__main__':
    os.umask(0o022)
    main()
