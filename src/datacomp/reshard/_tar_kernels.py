"""Compiled (numba) kernels of the resharder: the scan's tar header walk and the pack's layout.

Each is one call per input tar / output batch that runs without the GIL and makes its own
``pread`` / ``pwrite`` calls (libc's, declared below), so the scan and pack threads run in
parallel instead of taking turns on the GIL for every member. The kernels handle the plain
case only: :func:`walk` returns a non-zero code for anything else (a bad checksum, a pax or GNU
long-name header, a non-octal or base-256 size, a non-ASCII name, a truncated file) and the
caller then runs the Python code, so both always give the same result.
"""
from __future__ import annotations

import sys

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

if sys.maxsize <= 2**32:  # pread / pwrite are declared with a 64-bit off_t
    raise ImportError("the reshard kernels need a 64-bit platform")

_I64 = ir.IntType(64)
_CHAR_P = ir.IntType(8).as_pointer()
_IO_TYPE = ir.FunctionType(_I64, [ir.IntType(32), _CHAR_P, _I64, _I64])


def _libc_io(context, builder, signature, args, name):
    """``name(fd, &arr[start], count, offset)``: the symbol is declared by name in the compiled
    module and resolved from the process's libc when the code is loaded, so the kernels still
    cache on disk (a ctypes function pointer would be a constant address and disable the cache)."""
    fd, arr, start, count, offset = args
    fd_t, arr_t, start_t, count_t, offset_t = signature.args
    fn = cgutils.get_or_insert_function(builder.module, _IO_TYPE, name)
    ary = context.make_array(arr_t)(context, builder, arr)
    ptr = builder.bitcast(builder.gep(ary.data, [context.cast(builder, start, start_t, types.intp)]), _CHAR_P)
    fd32 = builder.trunc(context.cast(builder, fd, fd_t, types.int64), ir.IntType(32))
    return builder.call(fn, [fd32, ptr, context.cast(builder, count, count_t, types.int64),
                             context.cast(builder, offset, offset_t, types.int64)])


@intrinsic
def _pread(typingctx, fd, arr, start, count, offset):
    """``pread`` into ``arr[start:start + count]``; the bytes read, or -1."""
    return types.int64(fd, arr, start, count, offset), lambda c, b, s, a: _libc_io(c, b, s, a, "pread")


@intrinsic
def _pwrite(typingctx, fd, arr, start, count, offset):
    """``pwrite`` of ``arr[start:start + count]``; the bytes written, or -1."""
    return types.int64(fd, arr, start, count, offset), lambda c, b, s, a: _libc_io(c, b, s, a, "pwrite")


@njit(cache=True)
def _grow(a, n):  # pragma: no cover - compiled
    """``a`` if it holds ``n`` rows, else a copy with room for at least twice as many."""
    if n <= a.shape[0]:
        return a
    b = np.empty((max(n, 2 * a.shape[0]),) + a.shape[1:], a.dtype)
    b[: a.shape[0]] = a
    return b


@njit(cache=True)
def _octal(buf, i, n):  # pragma: no cover - compiled
    """``n`` octal digits at ``buf[i:]`` (the plain layout only), or -1."""
    v = 0
    for k in range(i, i + n):
        c = buf[k]
        if c < 48 or c > 55:
            return -1
        v = v * 8 + (c - 48)
    return v


# ---- scan ------------------------------------------------------------------------------------

OK, NEEDS_JSON, NO_JSON, BAD = 0, 1, 2, 3  # sample states
_HEX_VAL = np.full(256, -1, np.int8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VAL[_c] = _i
for _i, _c in enumerate(b"ABCDEF"):
    _HEX_VAL[_c] = 10 + _i
_LOWER_HEX = np.frombuffer(b"0123456789abcdef", np.uint8).copy()


@njit(cache=True)
def _is_space(c):  # pragma: no cover - compiled
    return c == 32 or 9 <= c <= 13  # bytes regex \s


@njit(cache=True)
def _flat_uid(raw, lo, n, out):  # pragma: no cover - compiled
    """scan._uid_from_json's fast path on ``raw[lo:lo+n]``: True, with the lower-case uid in
    ``out``, when the json has one ``{`` and one ``"uid"`` (counted overlapping, so never fewer
    than ``bytes.count`` finds) followed by ``\\s*:\\s*"``, 32 hex digits and ``"``; False
    otherwise (the caller then asks ``json.loads``)."""
    braces = 0
    hits = 0
    at = -1
    hi = lo + n
    for i in range(lo, hi):
        c = raw[i]
        if c == 123:
            braces += 1
        elif c == 34 and i + 4 < hi and raw[i + 1] == 117 and raw[i + 2] == 105 and raw[i + 3] == 100 \
                and raw[i + 4] == 34:
            hits += 1
            at = i
    if braces != 1 or hits != 1:
        return False
    i = at + 5
    while i < hi and _is_space(raw[i]):
        i += 1
    if i >= hi or raw[i] != 58:
        return False
    i += 1
    while i < hi and _is_space(raw[i]):
        i += 1
    if i + 33 >= hi or raw[i] != 34 or raw[i + 33] != 34:
        return False
    for k in range(32):
        v = _HEX_VAL[raw[i + 1 + k]]
        if v < 0:
            return False
        out[k] = _LOWER_HEX[v]
    return True


@njit(cache=True)
def _has(hay, lo, hi, needle):  # pragma: no cover - compiled
    """Whether ``needle`` occurs in ``hay[lo:hi]``."""
    m = len(needle)
    for i in range(lo, hi - m + 1):
        k = 0
        while k < m and hay[i + k] == needle[k]:
            k += 1
        if k == m:
            return True
    return False


_JPEG_END = np.frombuffer(b"\xff\xd9", np.uint8).copy()
_PNG = np.frombuffer(b"\x89PNG\r\n\x1a\n", np.uint8).copy()
_IEND = np.frombuffer(b"IEND", np.uint8).copy()


@njit(cache=True)
def _is_image_ext(ext, lo, hi):  # pragma: no cover - compiled
    """Whether ``ext[lo:hi]`` is jpg, jpeg, png or webp (the extensions the image check reads)."""
    n = hi - lo
    if n == 3:
        a, b, c = ext[lo], ext[lo + 1], ext[lo + 2]
        return (a == 106 and b == 112 and c == 103) or (a == 112 and b == 110 and c == 103)  # jpg, png
    if n == 4:
        a, b, c, d = ext[lo], ext[lo + 1], ext[lo + 2], ext[lo + 3]
        return (a == 106 and b == 112 and c == 101 and d == 103) or (a == 119 and b == 101 and c == 98 and d == 112)
    return False


@njit(cache=True)
def _image_ok(head, h0, tail, t0, n, size):  # pragma: no cover - compiled
    """scan._images_look_whole for one member: ``head[h0:h0+n]`` / ``tail[t0:t0+n]`` are
    its first / last ``n = min(size, edge)`` bytes."""
    if size == 0:
        return False
    if n >= 2 and head[h0] == 0xFF and head[h0 + 1] == 0xD8:
        return _has(tail, t0, t0 + n, _JPEG_END)
    if n >= 8:
        png = True
        for k in range(8):
            png = png and head[h0 + k] == _PNG[k]
        if png:
            return _has(tail, t0 + max(n - 12, 0), t0 + n, _IEND)
    if n >= 12 and head[h0] == 82 and head[h0 + 1] == 73 and head[h0 + 2] == 70 and head[h0 + 3] == 70 \
            and head[h0 + 8] == 87 and head[h0 + 9] == 69 and head[h0 + 10] == 66 and head[h0 + 11] == 80:
        declared = (np.int64(head[h0 + 4]) | np.int64(head[h0 + 5]) << 8 | np.int64(head[h0 + 6]) << 16
                    | np.int64(head[h0 + 7]) << 24) + 8
        return declared <= size
    return True


@njit(cache=True)
def _name_safe(buf, lo, n):  # pragma: no cover - compiled
    """formats.tar.safe_member_name on the ASCII name ``buf[lo:lo+n]``."""
    seps = False
    for i in range(lo, lo + n):
        seps = seps or buf[i] == 47 or buf[i] == 92
    if not seps:
        return not (n == 2 and buf[lo] == 46 and buf[lo + 1] == 46)
    if buf[lo] == 47 or buf[lo] == 92:
        return False
    start = lo
    for i in range(lo, lo + n + 1):
        if i == lo + n or buf[i] == 47 or buf[i] == 92:
            if i - start == 2 and buf[start] == 46 and buf[start + 1] == 46:
                return False
            start = i + 1
    return True


@njit(cache=True, nogil=True)
def walk(fd, file_size, window, small_max, edge):  # pragma: no cover - compiled
    """the resharder's header walk and sample grouping (``formats.ustar.read_headers_fast`` + ``scan.scan_unit``) over
    an input tar, reading windows exactly as ``_read_headers_fast`` does.

    Returns (code, end of the members, unsafe members, samples, members). ``code`` is 0 for a
    plain tar; otherwise the rest is void and the Python code must run. samples = (state, first
    member (plus one entry: the end), uid as 32 lower-case hex bytes (state OK), json member
    (-1: none), images look whole); members = (data offset, size, extension offsets into the
    ext bytes, ext bytes (lower-cased), offsets into the small bytes (members of at most
    ``small_max`` bytes; -1 for the others), small bytes).
    """
    buf = np.empty(max(window, 1024 + small_max + edge), np.uint8)
    m_off = np.empty(1024, np.int64)
    m_size = np.empty(1024, np.int64)
    m_ext = np.zeros(1025, np.int64)
    ext_b = np.empty(4096, np.uint8)
    m_small = np.empty(1024, np.int64)
    small_b = np.empty(1 << 16, np.uint8)
    m_head = np.empty((1024, edge), np.uint8)
    m_tail = np.empty((1024, edge), np.uint8)
    s_m0 = np.empty(513, np.int64)
    s_bad = np.empty(512, np.bool_)
    s_json = np.empty(512, np.int64)
    key = np.empty(100, np.uint8)
    key_n = -1  # -1: no sample yet
    n_m = n_s = n_small = unsafe = 0
    pos = b0 = b1 = 0
    prev = -1  # a big member whose last bytes are in the next window
    end_pos = -1
    code = 0
    while pos < file_size:
        need_lo = pos - 512 - edge if pos >= 512 + edge else 0
        need_hi = min(pos + 512 + small_max, file_size)
        if not (b0 <= need_lo and need_hi <= b1):
            got = _pread(fd, buf, 0, max(need_hi - need_lo, window), need_lo)
            if got < 0:
                code = 1
                break
            b0, b1 = need_lo, need_lo + got
        if prev >= 0:
            end = m_off[prev] + m_size[prev] - b0
            if end - edge < 0 or end > b1 - b0:
                code = 2
                break
            m_tail[prev, :] = buf[end - edge : end]
            prev = -1
        h = pos - b0
        if b1 - b0 - h < 512:
            break  # cut-off header
        zero = True
        for k in range(h, h + 512):
            if buf[k] != 0:
                zero = False
                break
        if zero:
            end_pos = pos
            break
        chk = _octal(buf, h + 148, 6)
        size = _octal(buf, h + 124, 11)
        if chk < 0 or buf[h + 154] != 0 or buf[h + 155] != 32 or size < 0 or buf[h + 135] != 0:
            break  # not tarfile's layout, or not octal
        total = 0
        for k in range(h, h + 512):
            total += buf[k]
        expect = chk - 256
        for k in range(h + 148, h + 156):
            expect += buf[k]
        if not (0 <= expect <= 512 * 255 and (expect + 1) % 65521 == (total + 1) % 65521):
            break  # formats.ustar.header_sum_ok fails
        flag = buf[h + 156]
        if flag == 120 or flag == 103 or flag == 76 or flag == 75:  # x g L K
            break
        n = 0
        plain = True
        while n < 100 and buf[h + n] != 0:
            plain = plain and buf[h + n] < 128
            n += 1
        if buf[h + 257] == 117 and buf[h + 258] == 115 and buf[h + 259] == 116 and buf[h + 260] == 97 \
                and buf[h + 261] == 114 and buf[h + 345] != 0:
            plain = False  # a ustar name prefix
        if not plain:
            break
        link = flag == 49 or flag == 50  # a hard or symbolic link: an unsafe member of its sample
        if flag == 48 or flag == 0 or flag == 55 or link:  # a regular file: grouped as scan_unit does
            base = h
            for k in range(h, h + n):
                if buf[k] == 47:
                    base = k + 1
            dot = -1
            for k in range(base, h + n):
                if buf[k] == 46:
                    dot = k
                    break
            if dot >= 0:
                same = key_n == dot - base
                k = 0
                while same and k < key_n:
                    same = key[k] == buf[base + k]
                    k += 1
                if not same:  # a new sample
                    if key_n >= 0:
                        n_s += 1
                    s_m0 = _grow(s_m0, n_s + 2)
                    s_bad = _grow(s_bad, n_s + 1)
                    s_json = _grow(s_json, n_s + 1)
                    s_m0[n_s] = n_m
                    s_bad[n_s] = False
                    s_json[n_s] = -1
                    key_n = dot - base
                    key[:key_n] = buf[base:dot]
                if link or not _name_safe(buf, h, n):
                    unsafe += 1
                    s_bad[n_s] = True
                else:
                    room = b1 - b0 - h - 512  # the member's bytes in the window
                    if (size <= small_max and size > room) or (size > small_max and edge > room):
                        break  # it runs past the end of the file
                    m_off = _grow(m_off, n_m + 1)
                    m_size = _grow(m_size, n_m + 1)
                    m_small = _grow(m_small, n_m + 1)
                    m_head = _grow(m_head, n_m + 1)
                    m_tail = _grow(m_tail, n_m + 1)
                    m_ext = _grow(m_ext, n_m + 2)
                    e0 = m_ext[n_m]
                    e1 = e0 + h + n - dot - 1
                    ext_b = _grow(ext_b, e1)
                    for k in range(dot + 1, h + n):
                        c = buf[k]
                        ext_b[e0 + k - dot - 1] = c + 32 if 65 <= c <= 90 else c
                    m_ext[n_m + 1] = e1
                    if e1 - e0 == 4 and ext_b[e0] == 106 and ext_b[e0 + 1] == 115 and ext_b[e0 + 2] == 111 \
                            and ext_b[e0 + 3] == 110:
                        s_json[n_s] = n_m  # the last json member counts
                    m_off[n_m] = pos + 512
                    m_size[n_m] = size
                    if size <= small_max:
                        small_b = _grow(small_b, n_small + size)
                        small_b[n_small : n_small + size] = buf[h + 512 : h + 512 + size]
                        m_small[n_m] = n_small
                        n_small += size
                    else:
                        m_small[n_m] = -1
                        m_head[n_m, :] = buf[h + 512 : h + 512 + edge]
                        prev = n_m
                    n_m += 1
        pos += 512 + (size + 511) // 512 * 512
    if key_n >= 0:
        n_s += 1
    if end_pos < 0 and code == 0:
        code = 3  # damage, or no end-of-archive block: the Python code decides what is kept
    if code != 0:
        n_s = n_m = n_small = 0
    s_m0 = _grow(s_m0, n_s + 1)
    s_m0[n_s] = n_m
    state, uid, img = _samples(fd, n_s, s_m0, s_bad, s_json, m_off, m_size, m_ext, ext_b, m_small, small_b,
                               m_head, m_tail, edge)
    return (code, end_pos, unsafe, state, s_m0[: n_s + 1], uid, s_json[:n_s], img,
            m_off[:n_m], m_size[:n_m], m_ext[: n_m + 1], ext_b[: m_ext[n_m]], m_small[:n_m], small_b[:n_small])


@njit(cache=True)
def _samples(fd, n_s, s_m0, s_bad, s_json, m_off, m_size, m_ext, ext_b, m_small, small_b, m_head, m_tail,
             edge):  # pragma: no cover - compiled
    """Each sample's state and uid (the json's fast path; a json too big for the walk's windows
    is read whole) and whether its images look whole."""
    state = np.empty(n_s, np.uint8)
    uid = np.zeros((n_s, 32), np.uint8)
    img = np.ones(n_s, np.bool_)
    raw = np.empty(0, np.uint8)
    for s in range(n_s):
        j = s_json[s]
        if s_bad[s]:
            state[s] = BAD
            continue
        if j < 0:
            state[s] = NO_JSON
        else:
            size = m_size[j]
            if m_small[j] >= 0:
                ok = _flat_uid(small_b, m_small[j], size, uid[s])
            else:
                raw = _grow(raw, size)
                ok = _pread(fd, raw, 0, size, m_off[j]) == size and _flat_uid(raw, 0, size, uid[s])
            state[s] = OK if ok else NEEDS_JSON
        for m in range(s_m0[s], s_m0[s + 1]):
            if not _is_image_ext(ext_b, m_ext[m], m_ext[m + 1]):
                continue
            size = m_size[m]
            n = min(size, edge)
            if m_small[m] >= 0:
                ok = _image_ok(small_b, m_small[m], small_b, m_small[m] + size - n, n, size)
            else:
                ok = _image_ok(m_head[m], 0, m_tail[m], 0, n, size)
            if not ok:
                img[s] = False
                break
    return state, uid, img


# ---- pack ------------------------------------------------------------------------------------

@njit(cache=True)
def _rank(ext_b, lo, hi):  # pragma: no cover - compiled
    """formats.tar.member_order's rank: jpg, txt, json, then the rest."""
    n = hi - lo
    if n == 3 and ext_b[lo] == 106 and ext_b[lo + 1] == 112 and ext_b[lo + 2] == 103:
        return 0
    if n == 3 and ext_b[lo] == 116 and ext_b[lo + 1] == 120 and ext_b[lo + 2] == 116:
        return 1
    if n == 4 and ext_b[lo] == 106 and ext_b[lo + 1] == 115 and ext_b[lo + 2] == 111 and ext_b[lo + 3] == 110:
        return 2
    return 3


@njit(cache=True)
def _before(ext_o, ext_b, a, b):  # pragma: no cover - compiled
    """Whether member ``a`` goes strictly before member ``b`` (rank, then the ASCII ext)."""
    ra, rb = _rank(ext_b, ext_o[a], ext_o[a + 1]), _rank(ext_b, ext_o[b], ext_o[b + 1])
    if ra != rb:
        return ra < rb
    la, lb = ext_o[a + 1] - ext_o[a], ext_o[b + 1] - ext_o[b]
    for k in range(min(la, lb)):
        ca, cb = ext_b[ext_o[a] + k], ext_b[ext_o[b] + k]
        if ca != cb:
            return ca < cb
    return la < lb


@njit(cache=True)
def _put_octal(out, i, value, digits):  # pragma: no cover - compiled
    """``value`` as ``digits`` zero-padded octal digits at ``out[i:]``; returns their byte sum."""
    total = 0
    for k in range(digits - 1, -1, -1):
        c = 48 + (value & 7)
        out[i + k] = c
        total += c
        value >>= 3
    return total


@njit(cache=True, nogil=True)
def lay_out(uid, first, m0, ext_o, ext_b, offs, sizes, small_o, small_b, has_small, e, end, out_pos,
            template, template_sum, limit):  # pragma: no cover - compiled
    """fasttar.FastTarWriter's bytes for emitted samples ``e, e+1, ...`` of one input shard,
    keys ``{uid}-{j}``, starting at output offset ``out_pos``, until the batch holds ``limit``
    bytes of memory (or ``end``).

    The scan file's columns as arrays: rows (``uid`` 32 hex bytes; ``first``: first emitted
    index, plus one entry: the end; ``m0``: first member, plus the end), members (extension
    offsets / bytes, input offset, size, small-data offsets / bytes, small data present).
    Members held in the scan file are written from memory; the others are copied from the
    input, and copies that lie in the input exactly as in the output (the bytes between them
    are as long in both) merge into one.

    Returns (next emitted index, output end, memory bytes, writes (memory start, length,
    output offset), copies (input offset, length, output offset)). The copies must be made
    before the writes: the writes cover the bytes of the input between merged copies.
    """
    mem = np.empty(limit + 4096, np.uint8)
    writes = np.empty((64, 3), np.int64)
    copies = np.empty((64, 3), np.int64)
    order = np.empty(8, np.int64)
    digits = np.empty(24, np.uint8)
    n_w = n_c = p = 0
    w0, w_out = 0, out_pos  # the memory piece being filled and its output offset
    run_in, run_end, run_out = -1, -1, -1  # the copy being merged
    r = np.searchsorted(first, e, side="right") - 1
    while e < end and p < limit:
        while first[r + 1] <= e:
            r += 1
        j = e - first[r]
        n_dig = 0
        while True:
            digits[n_dig] = 48 + j % 10
            n_dig += 1
            j //= 10
            if j == 0:
                break
        a, b = m0[r], m0[r + 1]
        order = _grow(order, b - a)
        for i in range(b - a):  # insertion sort: stable, like sorted()
            k = i
            while k > 0 and _before(ext_o, ext_b, a + i, order[k - 1]):
                order[k] = order[k - 1]
                k -= 1
            order[k] = a + i
        for i in range(b - a):
            m = order[i]
            size = sizes[m]
            held = has_small[m] and small_o[m + 1] - small_o[m] == size
            mem = _grow(mem, p + 1024 + (size if held else 0))
            h = p
            mem[h : h + 512] = template
            mem[h : h + 32] = uid[r]
            mem[h + 32] = 45  # "-"
            for k in range(n_dig):
                mem[h + 33 + k] = digits[n_dig - 1 - k]
            q = h + 33 + n_dig
            mem[q] = 46  # "."
            n_ext = ext_o[m + 1] - ext_o[m]
            mem[q + 1 : q + 1 + n_ext] = ext_b[ext_o[m] : ext_o[m + 1]]
            total = template_sum
            for k in range(h, q + 1 + n_ext):
                total += mem[k]
            total += _put_octal(mem, h + 124, size, 11)
            _put_octal(mem, h + 148, total, 6)
            mem[h + 154] = 0
            mem[h + 155] = 32
            p += 512
            if held:
                mem[p : p + size] = small_b[small_o[m] : small_o[m + 1]]
                p += size
            else:
                at = w_out + p - w0  # the member's output offset
                if p > w0:
                    writes = _grow(writes, n_w + 1)
                    writes[n_w, 0], writes[n_w, 1], writes[n_w, 2] = w0, p - w0, w_out
                    n_w += 1
                if run_in >= 0 and offs[m] - run_in == at - run_out:
                    run_end = offs[m] + size
                else:
                    if run_in >= 0:
                        copies = _grow(copies, n_c + 1)
                        copies[n_c, 0], copies[n_c, 1], copies[n_c, 2] = run_in, run_end - run_in, run_out
                        n_c += 1
                    run_in, run_end, run_out = offs[m], offs[m] + size, at
                w0, w_out = p, at + size
            pad = -size % 512
            mem[p : p + pad] = 0
            p += pad
        e += 1
    if p > w0:
        writes = _grow(writes, n_w + 1)
        writes[n_w, 0], writes[n_w, 1], writes[n_w, 2] = w0, p - w0, w_out
        n_w += 1
    if run_in >= 0:
        copies = _grow(copies, n_c + 1)
        copies[n_c, 0], copies[n_c, 1], copies[n_c, 2] = run_in, run_end - run_in, run_out
        n_c += 1
    return e, w_out + p - w0, mem[:p], writes[:n_w], copies[:n_c]


@njit(cache=True, nogil=True)
def pwrite_all(fd, mem, writes):  # pragma: no cover - compiled
    """``pwrite`` each (memory start, length, output offset) piece; -1 when all were written,
    else the index of the piece that failed (the caller repeats it to raise the error)."""
    for i in range(writes.shape[0]):
        a, n, off = writes[i, 0], writes[i, 1], writes[i, 2]
        while n > 0:
            done = _pwrite(fd, mem, a, n, off)
            if done <= 0:
                return i
            a += done
            n -= done
            off += done
    return -1
