package main

import (
	"fmt"
	"net/netip"

	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/ec2"
	"github.com/pulumi/pulumi-aws/sdk/v6/go/aws/vpc"
	"github.com/pulumi/pulumi/sdk/v3/go/pulumi"
)

// Network is the stack's own VPC: a public and a private subnet in each of
// two AZs. Load balancers and the NAT gateway live in the public subnets,
// everything else in the private ones.
//
// Egress cost choice: ONE NAT gateway (in the first AZ) for both private
// subnets, about 33 USD a month plus 0.045 USD per GB, instead of one per AZ.
// The tasks need the internet anyway (Kong's and RabbitMQ's images come from
// Docker Hub, telemetry goes to Grafana Cloud), so interface endpoints for
// ECR, logs and Secrets Manager (about 7.5 USD a month each per AZ) would
// add cost without removing the NAT. A free S3 gateway endpoint carries the
// ECR image layers, which are most of the bytes. If the first AZ fails, the
// second loses egress until it is back: accepted for this system's size.
type Network struct {
	VPC            *ec2.Vpc
	PublicSubnets  pulumi.StringArray
	PrivateSubnets pulumi.StringArray
	CIDR           string
}

// subnetCIDR returns the index-th /(bits+4) block of base (a /16 gives /20s).
func subnetCIDR(base string, index int) string {
	p := netip.MustParsePrefix(base)
	a := p.Addr().As4()
	size := uint32(1) << (32 - (p.Bits() + 4))
	n := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3])
	n += size * uint32(index)
	return fmt.Sprintf("%d.%d.%d.%d/%d", n>>24, n>>16&255, n>>8&255, n&255, p.Bits()+4)
}

func newNetwork(ctx *pulumi.Context, s *Settings) (*Network, error) {
	vpc, err := ec2.NewVpc(ctx, "vpc", &ec2.VpcArgs{
		CidrBlock:          pulumi.String(s.VPCCIDR),
		EnableDnsHostnames: pulumi.Bool(true),
		EnableDnsSupport:   pulumi.Bool(true),
		Tags:               tags(s, "vpc"),
	})
	if err != nil {
		return nil, err
	}
	igw, err := ec2.NewInternetGateway(ctx, "igw", &ec2.InternetGatewayArgs{VpcId: vpc.ID(), Tags: tags(s, "igw")})
	if err != nil {
		return nil, err
	}
	publicRT, err := ec2.NewRouteTable(ctx, "public", &ec2.RouteTableArgs{
		VpcId:  vpc.ID(),
		Routes: ec2.RouteTableRouteArray{&ec2.RouteTableRouteArgs{CidrBlock: pulumi.String("0.0.0.0/0"), GatewayId: igw.ID()}},
		Tags:   tags(s, "public"),
	})
	if err != nil {
		return nil, err
	}
	n := &Network{VPC: vpc, CIDR: s.VPCCIDR}
	var publics []*ec2.Subnet
	for i, az := range s.AZs {
		sub, err := ec2.NewSubnet(ctx, fmt.Sprintf("public-%d", i), &ec2.SubnetArgs{
			VpcId: vpc.ID(), AvailabilityZone: pulumi.String(az), CidrBlock: pulumi.String(subnetCIDR(s.VPCCIDR, i)),
			MapPublicIpOnLaunch: pulumi.Bool(false), Tags: tags(s, fmt.Sprintf("public-%s", az)),
		})
		if err != nil {
			return nil, err
		}
		if _, err := ec2.NewRouteTableAssociation(ctx, fmt.Sprintf("public-%d", i), &ec2.RouteTableAssociationArgs{
			SubnetId: sub.ID(), RouteTableId: publicRT.ID(),
		}); err != nil {
			return nil, err
		}
		publics = append(publics, sub)
		n.PublicSubnets = append(n.PublicSubnets, sub.ID())
	}
	eip, err := ec2.NewEip(ctx, "nat", &ec2.EipArgs{Domain: pulumi.String("vpc"), Tags: tags(s, "nat")})
	if err != nil {
		return nil, err
	}
	nat, err := ec2.NewNatGateway(ctx, "nat", &ec2.NatGatewayArgs{
		AllocationId: eip.ID(), SubnetId: publics[0].ID(), Tags: tags(s, "nat"),
	}, pulumi.DependsOn([]pulumi.Resource{igw}))
	if err != nil {
		return nil, err
	}
	privateRT, err := ec2.NewRouteTable(ctx, "private", &ec2.RouteTableArgs{
		VpcId:  vpc.ID(),
		Routes: ec2.RouteTableRouteArray{&ec2.RouteTableRouteArgs{CidrBlock: pulumi.String("0.0.0.0/0"), NatGatewayId: nat.ID()}},
		Tags:   tags(s, "private"),
	})
	if err != nil {
		return nil, err
	}
	for i, az := range s.AZs {
		sub, err := ec2.NewSubnet(ctx, fmt.Sprintf("private-%d", i), &ec2.SubnetArgs{
			VpcId: vpc.ID(), AvailabilityZone: pulumi.String(az), CidrBlock: pulumi.String(subnetCIDR(s.VPCCIDR, 8+i)),
			Tags: tags(s, fmt.Sprintf("private-%s", az)),
		})
		if err != nil {
			return nil, err
		}
		if _, err := ec2.NewRouteTableAssociation(ctx, fmt.Sprintf("private-%d", i), &ec2.RouteTableAssociationArgs{
			SubnetId: sub.ID(), RouteTableId: privateRT.ID(),
		}); err != nil {
			return nil, err
		}
		n.PrivateSubnets = append(n.PrivateSubnets, sub.ID())
	}
	if _, err := ec2.NewVpcEndpoint(ctx, "s3", &ec2.VpcEndpointArgs{
		VpcId: vpc.ID(), ServiceName: pulumi.Sprintf("com.amazonaws.%s.s3", s.Region),
		VpcEndpointType: pulumi.String("Gateway"), RouteTableIds: pulumi.StringArray{privateRT.ID()},
		Tags: tags(s, "s3"),
	}); err != nil {
		return nil, err
	}
	return n, nil
}

func tags(s *Settings, name string) pulumi.StringMap {
	return pulumi.StringMap{"Name": pulumi.String(s.Name(name)), "project": pulumi.String("invoicing")}
}

// Rule is one ingress rule of a security group: a port from either other
// groups or CIDR blocks.
type Rule struct {
	Port   int
	From   []pulumi.StringInput // security group ids
	CIDRs  []string
	Self   bool
	Reason string
}

// newSecurityGroup creates a group with all egress and exactly the given
// ingress, one aws:vpc/securityGroupIngressRule per source so a test (and
// an auditor) sees each opening on its own.
func newSecurityGroup(ctx *pulumi.Context, s *Settings, n *Network, name, description string, rules []Rule) (*ec2.SecurityGroup, error) {
	sg, err := ec2.NewSecurityGroup(ctx, name, &ec2.SecurityGroupArgs{
		VpcId: n.VPC.ID(), Description: pulumi.String(description), Tags: tags(s, name),
	})
	if err != nil {
		return nil, err
	}
	if _, err := vpc.NewSecurityGroupEgressRule(ctx, name+"-egress", &vpc.SecurityGroupEgressRuleArgs{
		SecurityGroupId: sg.ID(), IpProtocol: pulumi.String("-1"), CidrIpv4: pulumi.String("0.0.0.0/0"),
		Description: pulumi.String("all outbound"),
	}); err != nil {
		return nil, err
	}
	if err := addIngress(ctx, name, sg, rules); err != nil {
		return nil, err
	}
	return sg, nil
}

func addIngress(ctx *pulumi.Context, name string, sg *ec2.SecurityGroup, rules []Rule) error {
	for _, r := range rules {
		base := func(suffix string) *vpc.SecurityGroupIngressRuleArgs {
			return &vpc.SecurityGroupIngressRuleArgs{
				SecurityGroupId: sg.ID(), IpProtocol: pulumi.String("tcp"),
				FromPort: pulumi.Int(r.Port), ToPort: pulumi.Int(r.Port), Description: pulumi.String(r.Reason),
			}
		}
		for i, from := range r.From {
			a := base("")
			a.ReferencedSecurityGroupId = from
			if _, err := vpc.NewSecurityGroupIngressRule(ctx, fmt.Sprintf("%s-%d-sg%d", name, r.Port, i), a); err != nil {
				return err
			}
		}
		if r.Self {
			a := base("")
			a.ReferencedSecurityGroupId = sg.ID()
			if _, err := vpc.NewSecurityGroupIngressRule(ctx, fmt.Sprintf("%s-%d-self", name, r.Port), a); err != nil {
				return err
			}
		}
		for i, cidr := range r.CIDRs {
			a := base("")
			a.CidrIpv4 = pulumi.String(cidr)
			if _, err := vpc.NewSecurityGroupIngressRule(ctx, fmt.Sprintf("%s-%d-cidr%d", name, r.Port, i), a); err != nil {
				return err
			}
		}
	}
	return nil
}
