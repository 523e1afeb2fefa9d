import sys

from webhook import cli

sys.exit(cli.main())
