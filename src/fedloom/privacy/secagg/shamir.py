"""Shamir secret sharing over the prime field GF(2^521 - 1).

Secrets are 32-byte values (an X25519 private key, a self-mask seed) read as integers, far
below the prime. A share is the polynomial's value at ``x = holder id + 1`` (never 0, which
holds the secret); any ``threshold`` shares give the secret back, fewer say nothing about it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

PRIME = 2**521 - 1  # a Mersenne prime
SHARE_BYTES = 66  # ceil(521 / 8)
SECRET_BYTES = 32


def split(
    secret: bytes, xs: Sequence[int], threshold: int, randomness: bytes
) -> dict[int, bytes]:
    """Shares of ``secret`` at the points ``xs``; ``randomness`` gives the coefficients.

    ``randomness`` must hold ``(threshold - 1) * (SHARE_BYTES + 8)`` uniformly random bytes
    (8 extra bytes per coefficient make the reduction mod the prime unbiased to 2^-64).
    """
    if len(secret) != SECRET_BYTES:
        raise ValueError(f"a secret is {SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(f"threshold {threshold} must be in [1, {len(xs)}] (number of shares)")
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ValueError("share points must be distinct and non-zero")
    step = SHARE_BYTES + 8
    if len(randomness) < (threshold - 1) * step:
        raise ValueError("not enough randomness for the polynomial's coefficients")
    coefficients = [int.from_bytes(secret, "big")] + [
        int.from_bytes(randomness[i * step : (i + 1) * step], "big") % PRIME
        for i in range(threshold - 1)
    ]
    shares = {}
    for x in xs:
        y = 0
        for c in reversed(coefficients):  # Horner
            y = (y * x + c) % PRIME
        shares[x] = y.to_bytes(SHARE_BYTES, "big")
    return shares


def randomness_needed(threshold: int) -> int:
    """Bytes of randomness :func:`split` takes for ``threshold``."""
    return (threshold - 1) * (SHARE_BYTES + 8)


def share_value(share: bytes) -> int:
    """The field element a share holds; refuses a share of the wrong size or out of the field."""
    if len(share) != SHARE_BYTES:
        raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(share)}")
    y = int.from_bytes(share, "big")
    if y >= PRIME:
        raise ValueError("share value outside the field")
    return y


def combine(shares: Mapping[int, bytes], threshold: int) -> bytes:
    """The secret from ``threshold`` (or more; the first ``threshold`` by x are used) shares."""
    if len(shares) < threshold:
        raise ValueError(f"{len(shares)} shares, {threshold} needed")
    points = [(x, share_value(shares[x])) for x in sorted(shares)[:threshold]]
    # Lagrange at 0: secret = sum y_i num_i / den_i. The ids are small, so num_i and den_i
    # are small exact products; the t divisions take one modular inverse (Montgomery's trick)
    nums, dens = [], []
    for i, (xi, _) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num *= -xj
                den *= xi - xj
        nums.append(num % PRIME)
        dens.append(den % PRIME)
    prefix = [1]
    for den in dens:
        prefix.append(prefix[-1] * den % PRIME)
    inverse = pow(prefix[-1], -1, PRIME)  # of the product of every den
    secret = 0
    for i in reversed(range(len(points))):
        secret += points[i][1] * nums[i] % PRIME * (inverse * prefix[i] % PRIME)
        inverse = inverse * dens[i] % PRIME  # now the inverse of prefix[i]
    secret %= PRIME
    if secret >= 2 ** (8 * SECRET_BYTES):
        raise ValueError("the shares do not combine to a 32-byte secret (inconsistent shares)")
    return secret.to_bytes(SECRET_BYTES, "big")
