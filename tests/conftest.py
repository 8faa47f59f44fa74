pytest_plugins = ["local_iot.pytest_plugin"]
