#!/usr/bin/python3
"""Times OpenStack Glance's own image cache (Debian's python3-glance) for bench figure 14.

Run with Debian's /usr/bin/python3 (where python3-glance installs), with the
path of @cache/glance-testing's glance_driver.py as its argument: that module
speaks the protocol (one JSON request per line on stdin, one JSON answer per
line on stdout) and builds one `glance.image_cache.ImageCache` per
(directory, driver) as glance-api configures it; this script adds the timed
operations below on top of its own. Glance's imports (about 0.7 s) are paid
once, at start, outside every timing. Requests pass `max_size` (bytes) for
`image_cache_max_size`.

Operations (besides glance_driver.py's):
    workload      ids, size  the figure's small-entry workload, each phase timed
                             with time.perf_counter() around a loop over every id:
                             write   cache_image_iter(id, iter([bytes]))
                             isCached, getHitCount, getImageSize
                                     is_cached(id), get_hit_count(id), get_image_size(id)
                             read    with open_for_read(id) as f: f.read() (Glance counts the hit on exit)
                             list    get_cached_images() (one listing per pass)
                             prune   image_cache_max_size = half the bytes cached, prune()
                             Every phase but write and prune (which change what they
                             measure) runs `passes` + 1 times over the same ids: the
                             first pass is a warm-up and not counted; the phase's time is
                             the median of the others (the TypeScript side does the same).
                             Before every phase but write, dirty pages are written back
                             (sync(2), untimed), on both sides.
                             -> {"seconds": {phase: s}, "listed": n, "pruned": [files, bytes]}
    list_timed    repeat     get_cached_images() `repeat` times on a directory populated
                             beforehand -> {"seconds": [s, ...], "listed": n}
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
import glance_driver  # noqa: E402  (from the path given: @cache/glance-testing)

CONF = glance_driver.CONF


def _median(values):
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _settle():
    """Writes back every dirty page first (sync(2), untimed), as the TypeScript side does before each phase: a
    phase must not pay the writeback of what the phase before it wrote (on a disk-backed ext4, a hit's journal
    file waits behind it)."""
    os.sync()
    time.sleep(0.05)


def _passes(passes, fn):
    """Settles, then runs fn `passes` + 1 times; the median time of all but the first (warm-up) pass."""
    _settle()
    clock = time.perf_counter
    seconds = []
    for _ in range(passes + 1):
        start = clock()
        fn()
        seconds.append(clock() - start)
    return _median(seconds[1:])


def _workload(cache, request):
    ids = request['ids']
    data = b'\x42' * request['size']
    passes = request.get('passes', 5)
    seconds = {}
    clock = time.perf_counter

    start = clock()
    for image_id in ids:
        if not cache.cache_image_iter(image_id, iter([data])):
            raise RuntimeError('Glance did not cache %s' % image_id)
    seconds['write'] = clock() - start

    def is_cached():
        for image_id in ids:
            if not cache.is_cached(image_id):
                raise RuntimeError('%s is not cached' % image_id)
    seconds['isCached'] = _passes(passes, is_cached)

    def get_hit_count():
        for image_id in ids:
            cache.get_hit_count(image_id)
    seconds['getHitCount'] = _passes(passes, get_hit_count)

    def get_image_size():
        for image_id in ids:
            cache.get_image_size(image_id)
    seconds['getImageSize'] = _passes(passes, get_image_size)

    def read():
        for image_id in ids:
            with cache.open_for_read(image_id) as cache_file:
                if len(cache_file.read()) != len(data):
                    raise RuntimeError('short read of %s' % image_id)
    seconds['read'] = _passes(passes, read)

    listed = [0]

    def listing():
        listed[0] = len(cache.get_cached_images())
    seconds['list'] = _passes(passes, listing)

    CONF.set_override('image_cache_max_size', len(ids) * len(data) // 2)
    _settle()
    start = clock()
    pruned = cache.prune()
    seconds['prune'] = clock() - start
    CONF.set_override('image_cache_max_size', request['max_size'])
    return {'seconds': seconds, 'listed': listed[0], 'pruned': list(pruned)}


def _list_timed(cache, request):
    seconds = []
    listed = 0
    for _ in range(request.get('repeat', 1)):
        start = time.perf_counter()
        listed = len(cache.get_cached_images())
        seconds.append(time.perf_counter() - start)
    return {'seconds': seconds, 'listed': listed}


if __name__ == '__main__':
    glance_driver.main({'workload': _workload, 'list_timed': _list_timed})
