"""phaze: co-search of ML training accelerator architecture and distributed training plan."""

__version__ = "0.1.0"
