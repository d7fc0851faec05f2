"""The registry node: admits agents, carries calls between them, polices and scores those calls."""
