"""meterline: the usage-metering pipeline between product and invoice."""

__version__ = "0.1.0"
