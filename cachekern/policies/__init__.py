"""Caching policies: small objects that answer, each step, compute or reuse?"""

from cachekern.policies.teacache import TeaCache

__all__ = ["TeaCache"]
