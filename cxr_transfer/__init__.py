"""cxr-transfer: does ImageNet transfer learning help on chest X-rays, and which way?"""

__version__ = "0.1.0"
