#!/usr/bin/python3
"""Drives OpenStack Glance's own image cache (Debian's python3-glance) for tests.

Run with Debian's /usr/bin/python3 (where python3-glance installs). Reads one
JSON request per line on stdin and answers each with one JSON line on stdout:

    {"dir": "/cache", "driver": "sqlite" | "xattr", "max_size": 1000, "op": "...", ...}
    -> {"ok": true, "result": ...} | {"ok": false, "type": "FileNotFoundError", "error": "..."}

Every request names its cache directory and driver. The process keeps one
`glance.image_cache.ImageCache` per (directory, driver), built and configured
the way glance-api builds it (oslo.config options `image_cache_dir`,
`image_cache_driver`, `image_cache_sqlite_db`, `image_cache_max_size`), so
Glance's import cost is paid once per test file, not per call. A facade that
fell back to another driver than the one asked for is an error, not a silent
swap (Glance logs a warning and uses sqlite).

Operations (all through Glance's facade or its driver, never our own code):
    configure                 build the facade: {"driver": "<module of the driver in use>"}
    cache      id, data       cache_image_iter(id, [data]) -> {"cached": bool, "is_cached": bool}
    read       id             open_for_read(id), iterated in 64 KiB chunks -> {"data": text}
    list                      get_cached_images(), get_cache_size(), the driver's
                              get_least_recently_accessed(), get_hit_count(id) of each, get_queued_images()
    prune                     prune() -> [files, bytes]
    delete_all                delete_all_cached_images() -> count
    delete     id             delete_cached_image(id)
    queue      id             queue_image(id) -> bool
    clean      stall_time     clean(stall_time)
    version                   {"glance": version, "python": version}

Another script can add operations of its own on the same protocol and the
same configured facades (the bench's timed workload does, bench/glance_bench.py):
import this file as a module and call `main({"op": fn(cache, request)})`.
"""
import importlib.metadata
import json
import os
import sys
import traceback

from oslo_config import cfg

import glance.image_cache
from glance.image_cache.drivers import sqlite as _sqlite_driver  # registers image_cache_sqlite_db

CONF = cfg.CONF
CONF([], project='glance', default_config_files=[], default_config_dirs=[])

CHUNK = 64 * 1024
_caches = {}


def _configure(request):
    directory = request['dir']
    driver = request['driver']
    CONF.set_override('image_cache_dir', directory)
    CONF.set_override('image_cache_driver', driver)
    CONF.set_override('image_cache_sqlite_db', request.get('sqlite_db', 'cache.db'))
    CONF.set_override('image_cache_max_size', request.get('max_size', 10 * 1024 ** 3))
    key = (directory, driver)
    cache = _caches.get(key)
    if cache is None:
        cache = glance.image_cache.ImageCache()
        module = type(cache.driver).__module__
        if module != 'glance.image_cache.drivers.' + driver:
            raise RuntimeError('Glance fell back to %s instead of the %s driver' % (module, driver))
        _caches[key] = cache
    return cache


def _list(cache):
    driver = cache.driver
    images = cache.get_cached_images()
    for image in images:
        # Records as Glance returns them; only the order (xattr: directory order) is made stable here.
        image['image_id'] = str(image['image_id'])
    images.sort(key=lambda image: image['image_id'])
    lru = driver.get_least_recently_accessed()
    return {
        'images': images,
        'size': cache.get_cache_size(),
        'lru': None if lru is None else [lru[0], lru[1]],
        'hits': {image['image_id']: cache.get_hit_count(image['image_id']) for image in images},
        'queued': cache.get_queued_images(),
    }


def _read(cache, image_id):
    chunks = []
    with cache.open_for_read(image_id) as cache_file:
        for chunk in iter(lambda: cache_file.read(CHUNK), b''):
            chunks.append(chunk)
    return {'data': b''.join(chunks).decode('utf-8')}


def handle(request, extra_ops=None):
    op = request['op']
    if op == 'version':
        return {'glance': importlib.metadata.version('glance'), 'python': sys.version.split()[0]}
    cache = _configure(request)
    if extra_ops is not None and op in extra_ops:
        return extra_ops[op](cache, request)
    if op == 'configure':
        return {'driver': type(cache.driver).__module__}
    if op == 'cache':
        cached = cache.cache_image_iter(request['id'], iter([request['data'].encode('utf-8')]))
        return {'cached': cached, 'is_cached': cache.is_cached(request['id'])}
    if op == 'read':
        return _read(cache, request['id'])
    if op == 'list':
        return _list(cache)
    if op == 'prune':
        files, size = cache.prune()
        return [files, size]
    if op == 'delete_all':
        return cache.delete_all_cached_images()
    if op == 'delete':
        cache.delete_cached_image(request['id'])
        return None
    if op == 'queue':
        return cache.queue_image(request['id'])
    if op == 'clean':
        cache.clean(request.get('stall_time'))
        return None
    raise ValueError('unknown op %r' % (op,))


def main(extra_ops=None):
    """Answers requests from stdin until it closes; `extra_ops` maps more op names to fn(cache, request)."""
    os.umask(0o022)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            answer = {'ok': True, 'result': handle(json.loads(line), extra_ops)}
        except Exception as error:  # every failure goes back to the caller, the process lives on
            answer = {
                'ok': False,
                'type': type(error).__name__,
                'error': str(error),
                'traceback': traceback.format_exc(),
            }
        sys.stdout.write(json.dumps(answer) + '\n')
        sys.stdout.flush()


if __name__ == '__main__':
    main()
