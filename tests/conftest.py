pytest_plugins = ["local_iot.pytest_plugin", "tests.support.read_only"]
