"""Caching policies: small objects that answer, each step, compute or reuse?"""

from cachekern.policies.block_caching import BlockCaching
from cachekern.policies.teacache import TeaCache

__all__ = ["BlockCaching", "TeaCache"]
