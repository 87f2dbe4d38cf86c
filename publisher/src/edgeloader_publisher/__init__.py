"""edgeloader-publisher: the publishing side of edgeloader.

Not installed on devices. It holds the reference Resource API (for tests and
local stacks) and the tools that encrypt and publish resources and images.
"""

__version__ = "0.1.0"
